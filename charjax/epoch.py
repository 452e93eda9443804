"""One epoch as an iterator over its chunks: `iterate` yields after each jitted chunk of steps
with the state, the position in the epoch and its running metrics; the caller decides to
report, stop or save. `train_epoch` runs a whole epoch (library use, tests, benchmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from charjax import objective, parallel, step
from charjax.config import Config


@dataclass(frozen=True)
class Position:
    """How far an epoch got: chunks done, windows trained, and per metric the sum of its
    per-batch values weighted by each batch's real windows (so means weigh batches as Keras'
    epoch loss does)."""

    chunks: int = 0
    windows: int = 0
    sums: dict = field(default_factory=dict)

    def advance(self, metrics: dict, counts: np.ndarray) -> Position:
        """After one more chunk: `metrics` {name: [K] per step}, `counts` real windows [K]."""
        sums = dict(self.sums)
        for name, values in metrics.items():
            sums[name] = sums.get(name, 0.0) + float((np.asarray(values) * counts).sum())
        return Position(self.chunks + 1, self.windows + int(counts.sum()), sums)

    def means(self) -> dict:
        """The epoch's metrics so far, each a mean per window (a non-finite sum stays so)."""
        return {name: total / max(self.windows, 1) for name, total in self.sums.items()}

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.sums.values())

    def to_json(self) -> list:
        """FORMAT 2 layout: [chunks, loss sum, windows], then any other sums as a dict."""
        others = {k: v for k, v in self.sums.items() if k != "loss"}
        return [
            self.chunks,
            self.sums.get("loss", 0.0),
            self.windows,
            *([others] if others else []),
        ]

    @classmethod
    def from_json(cls, saved: list) -> Position:
        chunks, loss, windows, *others = saved
        return cls(chunks, windows, {"loss": loss, **(others[0] if others else {})})


class Progress(NamedTuple):
    state: step.TrainState  # after the chunk (its buffers are donated to the next one)
    position: Position
    chunks: int  # chunks in the whole epoch
    batches: int  # batches in the whole epoch

    @property
    def finished(self) -> bool:
        """The epoch ends here: all chunks done, or a metric became non-finite (the rest
        would be wasted; the divergence guard decides)."""
        return self.position.chunks == self.chunks or not self.position.finite


def iterate(
    state: step.TrainState,
    ids: np.ndarray,
    split: int,
    data_key: jax.Array,
    epoch: int,
    cfg: Config,
    mesh: Mesh | None = None,
    start: Position = Position(),  # noqa: B008 (frozen)
    context: step.StepContext = step.NO_CONTEXT,
):
    """Train epoch `epoch` on ids [0, split) from `start`, in the window order of
    `(data_key, epoch)` (shuffled; with --carry-state the streams in order, shifted by an
    offset): yield `Progress` after each chunk. The input state's buffers are donated: use the
    yielded states. `mesh`: all devices.

    The ids stay on the host: each chunk's windows are sliced there (while the device trains
    on the chunk before) and only they are sent. Each chunk is waited for: that keeps
    multi-device CPU runs from queueing calls (which can time out XLA's all-reduce rendezvous)
    and makes progress reports tell the truth.
    """
    mesh = mesh or parallel.data_mesh()
    goal = objective.of(cfg)
    width = parallel.device_width(cfg.batch_size, mesh)
    plan = goal.plan(data_key, epoch, split, cfg.steps_per_call, width)
    if start.chunks == 0:  # every stream starts the epoch from a zero state
        state = state._replace(carry=step.zero_streams(cfg))
    state = parallel.put(state, parallel.replicated(mesh))

    def chunk_batch(chunk):
        starts, weights = plan.chunk(chunk)
        batch = parallel.put((*goal.batch(ids, starts), weights), parallel.batch_sharded(mesh))
        return *batch, parallel.put(plan.lengths(chunk), parallel.replicated(mesh))

    position, upcoming = start, chunk_batch(start.chunks) if start.chunks < plan.chunks else None
    for chunk in range(start.chunks, plan.chunks):
        state, metrics = step.train_chunk(state, *upcoming, context, cfg, mesh)
        if chunk + 1 < plan.chunks:  # sliced while the device trains on this chunk
            upcoming = chunk_batch(chunk + 1)
        position = position.advance(metrics, plan.counts(chunk))
        progress = Progress(state, position, plan.chunks, plan.batches)
        yield progress
        if progress.finished:
            return


def train_epoch(state, ids, split: int, data_key, epoch: int, cfg: Config, mesh=None, **kw):
    """A whole epoch -> (state, mean loss per predicted char); see `iterate`."""
    position = kw.get("start", Position())
    for progress in iterate(state, ids, split, data_key, epoch, cfg, mesh, **kw):
        state, position = progress.state, progress.position
    return state, position.means().get("loss", float("nan"))
