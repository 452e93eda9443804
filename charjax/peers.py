"""A multi-process run's watch over its peers: when one process dies (or its machine freezes or
drops off the network), the others stop within a bounded time with one line naming it, instead
of waiting in an all-reduce (gloo) or in JAX's shutdown barrier until a long timeout ends them
with a crash report. (A process whose main thread hangs while the process lives still beats:
the watch is about lost processes, not slow ones.)

Each process beats through the coordination service's key-value store (a counter under its
index, every `timeout / 10` seconds) and reads the others' beats. A peer whose beat has not
moved for `timeout` seconds is lost; so is process 0 when the store itself (which lives in
process 0) stops answering. The checkpoints written so far are whole (orbax's atomic saves), so
a fresh set of processes resumes from the newest of them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

from charjax.errors import CharjaxError

KEY = "charjax/beat/{}"


class PeerWatch:
    """Beats for this process and watches the others' beats in a daemon thread."""

    def __init__(
        self,
        client,
        me: int,
        count: int,
        timeout: float,
        on_lost: Callable[[int, float], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client, self.me, self.count, self.timeout = client, me, count, timeout
        self.on_lost, self.clock = on_lost, clock
        self.interval = max(0.2, timeout / 10)
        self._beats, self._stop = 0, threading.Event()
        now = clock()
        self._last = {p: (None, now) for p in range(count) if p != me}
        self._store_down_since = None
        self._thread = threading.Thread(target=self._run, name="charjax-peer-watch", daemon=True)

    def start(self) -> PeerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            lost = self.check()
            if lost is not None:
                self.on_lost(lost, self.timeout)
                return

    def check(self) -> int | None:
        """One beat and one look at the others -> the index of a lost process, or None."""
        now = self.clock()
        try:
            self._beats += 1
            self.client.key_value_set(KEY.format(self.me), str(self._beats), allow_overwrite=True)
            for peer, (seen, since) in self._last.items():
                try:
                    beat = self.client.key_value_try_get(KEY.format(peer))
                except Exception:  # not beating yet (still starting): its clock runs
                    beat = seen
                if beat != seen:
                    self._last[peer] = (beat, now)
                elif now - since > self.timeout:
                    return peer
            self._store_down_since = None
        except Exception:  # the store lives in process 0: it stopped answering
            if self._store_down_since is None:
                self._store_down_since = now
            if now - self._store_down_since > self.timeout:
                return 0
        return None


_watch: PeerWatch | None = None


def watch(timeout: float, hint: str) -> PeerWatch | None:
    """Start watching the peers of this multi-process run (None in a one-process run, or where
    this JAX has no coordination client). A lost peer ends this process with exit code 3 and
    one line on stderr that names it and says how to go on (`hint`)."""
    global _watch
    import jax
    from jax._src import distributed

    client = getattr(distributed.global_state, "client", None)
    if client is None or jax.process_count() < 2:
        return None

    me, count = jax.process_index(), jax.process_count()

    def lost(peer: int, after: float) -> None:
        print(
            f"charjax-train: error: process {peer} of {count} stopped responding (no beat for "
            f"{after:g} s: it died or hangs), so process {me} stops too; the newest complete "
            f"checkpoint resumes with a fresh set of processes: {hint}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)  # not sys.exit: JAX's shutdown barrier would wait for the lost peer

    _watch = PeerWatch(client, me, count, timeout, lost).start()
    return _watch


def fail(error: Exception, debug: bool = False) -> None:
    """This process's run failed: in a way no user can fix (a collective broke: most likely
    a peer died), or a `CharjaxError` (out of memory). Give the watch time to name a lost peer
    (it ends the process); failing that, print the error in one line. Either way end the
    process without JAX's shutdown barrier, which would wait for a dead peer until its own
    timeout."""
    if _watch is None:
        return
    _watch._thread.join(_watch.timeout + 3 * _watch.interval)
    if debug:
        traceback.print_exception(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, CharjaxError):  # one the user can fix (a model too big: out of memory)
        line = f"charjax-train: error: {first}"
    else:
        line = (
            f"charjax-train: unexpected error: {type(error).__name__}: {first[:300]} (rerun "
            "with --debug for the traceback)"
        )
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


def stop() -> None:
    """The run ended normally: stop watching (peers now leave at their own pace)."""
    if _watch is not None:
        _watch.stop()
