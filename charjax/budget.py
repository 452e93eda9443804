"""`--minutes`: the epoch count whose whole run fits a budget of wall time on this machine.

A run with `--minutes M` times its own work before it trains (`probe`: a few chunks of
optimizer steps on a throwaway copy of the initial state, one validation, one round of
samples and one save, each after its compile), then `choose` picks the largest epoch count N
whose epochs fit what is left of M minutes. From then on the run is the run of `--epochs N`
(the learning-rate schedule is set for N epochs), and its config records N beside M, so a
resume keeps it.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from charjax import epoch as epochs
from charjax import parallel, sample, step
from charjax.checkpoint import Checkpoints
from charjax.errors import CharjaxError

PROBE_FOLDER = ".minutes-probe"  # a save is timed here, inside the run's folder, then removed
PROBE_SECONDS = 5.0  # chunks of optimizer steps are timed until this much time is measured
PROBE_CHUNKS = 3  # ... and at least this many (after the first, which compiles)
# Whole epochs ran slower than their timed parts add up to, by -6 to +8 % over four 20-minute
# runs on a 2-core Intel Xeon (2026-12-06: the per-epoch bookkeeping, a host's drift): the choice
# leaves this share of each epoch spare, so that a run mostly ends inside its budget.
MARGIN = 0.05


@dataclass(frozen=True)
class Timings:
    """What one epoch of this run costs here, in seconds, and what was spent before it."""

    chunk: float  # one jitted chunk of --steps-per-call optimizer steps
    chunks: int  # chunks in an epoch
    validation: float  # scoring the held-out tail (0 without one)
    samples: float  # the epoch's samples (0 without)
    save: float  # the epoch's checkpoint (both, with --keep-best)
    spent: float  # since the run started: loading, compiling, timing

    @property
    def epoch(self) -> float:
        return self.chunk * self.chunks + self.validation + self.samples + self.save


def choose(minutes: float, timings: Timings) -> int:
    """The most epochs whose run fits `minutes` of wall time after `timings.spent`, each epoch
    counted `MARGIN` longer than timed: 0 when not even one does."""
    left = minutes * 60 - timings.spent
    return max(0, math.floor(left / (timings.epoch * (1 + MARGIN)))) if left > 0 else 0


def fitted(minutes: float, timings: Timings) -> int:
    """`choose`, or a one-line error naming the budget that one epoch needs."""
    n = choose(minutes, timings)
    if n < 1:
        need = math.ceil((timings.spent + timings.epoch * (1 + MARGIN)) / 60)
        raise CharjaxError(
            f"--minutes {minutes:g} fits no whole epoch here: one takes "
            f"~{_seconds(timings.epoch)} s after {timings.spent:.0f} s of compiling and timing; "
            f"give --minutes {need} or more, or make the run smaller (--max-chars, --hidden)"
        )
    return n


def _seconds(seconds: float) -> str:
    """85 s as '85', 0.0832 as '0.083': the digits that matter."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"


def message(minutes: float, n: int, timings: Timings) -> str:
    """The line a run with --minutes says once it has chosen."""
    epochs = f"{n} epoch{'s' if n > 1 else ''}"
    return (
        f"{minutes:g} minutes fit {epochs} of ~{_seconds(timings.epoch)} s here "
        f"(after {timings.spent:.0f} s of compiling and timing); the same run again: --epochs {n}"
    )


def probe(this, mesh, folder, started: float, score) -> Timings:
    """Time run `this`'s epoch here (see the module docstring); nothing of the run changes.
    `started`: the run's start on `time.perf_counter`'s clock; `score(net, ids, cfg)`: the
    validation an epoch ends with. In a multi-process run every process takes process 0's
    figures, so all choose the same count."""
    cfg = this.cfg
    chunk, chunks = _time_chunks(this, mesh)
    net = this.bind(parallel.local(step.eval_params(this.state)))
    validation = samples = 0.0
    if this.held_out is not None:
        validation = _twice(lambda: score(net, this.held_out, cfg))
    if cfg.temperatures and cfg.sample_length:
        samples = _twice(lambda: sample.epoch_samples(net, this.corpus, this.keys.sample, 1, cfg))
    save = _time_save(this, folder) * (2 if cfg.keep_best else 1)
    figures = np.array([chunk, chunks, validation, samples, save,
                        time.perf_counter() - started])  # fmt: skip
    figures = parallel.from_process_0(figures)
    return Timings(float(figures[0]), int(figures[1]), *map(float, figures[2:]))


def _time_chunks(this, mesh) -> tuple[float, int]:
    """(median seconds of a chunk after the first, chunks in an epoch), from chunks of epoch 1
    trained on a copy of the initial state (the copy's buffers are donated, not the run's).
    Each chunk is waited for by `epoch.iterate`. An epoch of one chunk has only its first
    time, compile included: an upper bound."""
    copy = jax.tree.map(jnp.copy, this.state)
    chunks = epochs.iterate(copy, this.corpus.ids, this.split, this.keys.data, 1, this.cfg,
                            mesh, context=this.context)  # fmt: skip
    times, total = [], 1
    t0 = time.perf_counter()
    for done in chunks:
        now = time.perf_counter()
        times.append(now - t0)  # times[0]: the first chunk, which compiles
        t0, total = now, done.chunks
        if len(times) > PROBE_CHUNKS and sum(times[1:]) >= PROBE_SECONDS:
            break
    chunks.close()
    return float(np.median(times[1:] or times)), total


def _twice(work) -> float:
    """Seconds of `work` run a second time (the first compiles)."""
    jax.block_until_ready(work())
    t0 = time.perf_counter()
    jax.block_until_ready(work())
    return time.perf_counter() - t0


def _time_save(this, folder) -> float:
    """Seconds of one checkpoint of the run's state, written beside its epochs and removed."""
    where = folder.directory / PROBE_FOLDER
    meta = this.meta(0).to_json()
    probe = Checkpoints(where, keep=1)
    try:
        t0 = time.perf_counter()
        probe.save(0, this.state, meta)
        seconds = time.perf_counter() - t0
    finally:
        probe.close()
        parallel.barrier("minutes probe saved")
        if parallel.is_primary():
            shutil.rmtree(where, ignore_errors=True)
    return seconds
