"""The one timing loop of the benchmarks: a first call timed apart (it compiles), then repeats of
timed calls, each repeat waited for to its end; figures are medians over the repeats.

`time_calls` times one function; `time_rounds` times several in turn, round after round, so
that a drift of the host's speed (other load, clocks) spreads over all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """One function's timing: `first_s` the first call (compilation and one call's work),
    `seconds[r]` repeat r of `calls` calls, `work[r]` the work they did (`work` of each
    call's result, summed; by default 1 a call), `result` the last call's result."""

    first_s: float
    seconds: tuple[float, ...]
    work: tuple[float, ...]
    calls: int
    result: Any = None

    @property
    def median_s(self) -> float:
        """Median seconds of a repeat."""
        return statistics.median(self.seconds)

    @property
    def rates(self) -> list[float]:
        """Work per second of each repeat."""
        return [w / s for w, s in zip(self.work, self.seconds, strict=True)]

    @property
    def rate(self) -> float:
        """Median work per second over the repeats."""
        return statistics.median(self.rates)

    @property
    def compile_s(self) -> float:
        """The first call less a warm call's median seconds: the compilation."""
        return max(self.first_s - self.median_s / self.calls, 0.0)


def time_rounds(
    fns: dict[Any, Callable[[], Any]],
    repeats: int,
    *,
    calls: int = 1,
    sync: Callable[[Any], Any] | None = None,
    work: Callable[[Any], float] | None = None,
) -> dict[Any, Timing]:
    """Time each of `fns` (no arguments -> a result): each called once (timed apart), then
    `repeats` rounds in which each in turn makes `calls` calls, timed until `sync` of the last
    result returns (default `jax.block_until_ready`: asynchronous dispatch is waited for)."""
    if sync is None:
        import jax  # here: a caller may set the host's device count before jax starts

        sync = jax.block_until_ready
    work = work or (lambda result: 1)
    first, seconds, done, last = {}, {k: [] for k in fns}, {k: [] for k in fns}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        last[name] = fn()
        sync(last[name])
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in fns.items():
            total, t0 = 0.0, time.perf_counter()
            for _ in range(calls):
                last[name] = fn()
                total += work(last[name])
            sync(last[name])
            seconds[name].append(time.perf_counter() - t0)
            done[name].append(total)
    return {
        name: Timing(first[name], tuple(seconds[name]), tuple(done[name]), calls, last[name])
        for name in fns
    }


def time_calls(fn: Callable[[], Any], repeats: int, **kw) -> Timing:
    """Time one function: see `time_rounds`."""
    return time_rounds({None: fn}, repeats, **kw)[None]
