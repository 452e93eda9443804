"""How well a model predicts a text: cross-entropy in nats and bits per char, and perplexity
(`score_ids`), and the per-epoch validation of a run's held-out tail (`validate`).

Two ways to read a text, matching the two ways to sample:
- "window" (the original objective): each scored char is predicted from the `maxlen` chars
  before it, from a zero state, exactly like a training window. The first `maxlen` chars have
  no full window and are not scored; `stride` > 1 scores every stride-th char only.
- "stateful" (how a `sequence` model reads): one pass over the whole text carrying the LSTM
  state, every char from the second on predicted from everything before it.

Dynamic evaluation, which adapts the model to the text as it reads, is `charjax.dynamic`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from charjax import batching, model, objective, parallel, step
from charjax.config import READINGS, Config
from charjax.errors import CharjaxError

MODES = READINGS


@dataclass(frozen=True)
class Score:
    nats: float  # summed cross-entropy of the scored chars
    chars: int  # chars scored

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)


@functools.partial(jax.jit, static_argnames=("maxlen",))
def _window_nats(net, inputs, targets, weights, *, maxlen: int):
    """The training loss of the original objective on these windows (`step.nll`)."""
    return step.nll(net, inputs, targets, weights, _last_char(maxlen))[0]


def _last_char(maxlen: int) -> objective.Objective:
    """The original objective: the char after each window."""
    return objective.Objective(maxlen, 1, 1, False, False)


def losses(net: model.Model, carry, inputs, targets, valid):
    """Read ids inputs int[B, L] on from `carry` -> (carry after them, float32[B, L] nats of
    each target int[B, L]); `valid` bool[L] or None as in `model.CharLSTM`."""
    carry, logits = net(inputs, carry, valid, all_steps=True)
    return carry, optax.softmax_cross_entropy_with_integer_labels(logits, targets.astype(jnp.int32))


@jax.jit
def stream_nats(net: model.Model, carry, inputs, targets, valid):
    """Read one stream's ids inputs int[L] on from `carry` -> (carry after them, summed nats
    of its valid targets int[L]; `valid` bool[L])."""
    carry, each = losses(net, carry, inputs[None], targets[None], valid)
    return carry, jnp.sum(jnp.where(valid, each[0], 0.0))


def padded_pieces(values: np.ndarray, size: int):
    """Fixed-size pieces of `values` (the last zero-padded) with a 0/1 weight per slot, so one
    compilation serves every piece."""
    for begin in range(0, len(values), size):
        piece = values[begin : begin + size]
        pad = size - len(piece)
        yield np.pad(piece, (0, pad)), np.pad(np.ones(len(piece), np.float32), (0, pad))


def score_ids(
    net: model.Model,
    ids,
    *,
    mode: str = "window",
    maxlen: int = 60,
    stride: int = 1,
    batch_size: int = 512,
    chunk: int = 1024,
    progress=None,
    mesh: Mesh | None = None,
) -> Score:
    """Score the id sequence `ids` (int32[n]) under the model `net`; see the module docstring.
    `progress(done, total)`, if given, hears after each piece how many chars are scored.
    `mesh` (window mode; this process's devices, e.g. a run's): split each batch of windows
    over its devices, the sum taken across them; the same score up to float rounding."""
    progress = progress or (lambda done, total: None)
    if mode not in MODES:
        raise CharjaxError(f"score mode must be one of {', '.join(MODES)}, got {mode!r}")
    ids = np.asarray(ids)
    if mode == "window":
        windows = batching.window_count(len(ids), maxlen, stride)
        if windows == 0:
            raise CharjaxError(
                f"a text of {len(ids)} chars has nothing to score in window mode (it needs more "
                f"than --maxlen = {maxlen} chars); use a longer text or --mode stateful"
            )
        size, total, done = min(batch_size, windows), 0.0, 0
        net, place = _spread(net, mesh, size)
        for begin in range(0, windows, size):
            index = begin + np.arange(size)
            weights = (index < windows).astype(np.float32)
            starts = np.where(index < windows, index, 0) * stride
            inputs, targets, weights = place((*_last_char(maxlen).batch(ids, starts), weights))
            total += float(_window_nats(net, inputs, targets, weights, maxlen=maxlen))
            done += int(weights.sum())
            progress(done, windows)
        return Score(total, windows)
    if len(ids) < 2:
        raise CharjaxError("a text needs at least 2 chars to be scored")
    inputs, targets = ids[:-1], ids[1:]
    size = min(chunk, len(inputs))
    carry, total = net.spec.zero_carry(1), 0.0
    done = 0
    for (piece, valid), (target, _) in zip(
        padded_pieces(inputs, size), padded_pieces(targets, size), strict=True
    ):
        carry, nats = stream_nats(net, carry, piece, target, valid > 0)
        total += float(nats)
        done += int(valid.sum())
        progress(done, len(targets))
    return Score(total, len(targets))


def _spread(net: model.Model, mesh: Mesh | None, size: int):
    """(net, place): on a `mesh` of several devices that split a batch of `size` evenly, the
    model's parameters replicated on it and `place` putting a batch's arrays split along their
    first axis; otherwise both unchanged (one device)."""
    if mesh is None or mesh.size < 2 or size % mesh.size:
        return net, lambda arrays: arrays
    rows = NamedSharding(mesh, PartitionSpec(parallel.AXIS))
    return parallel.put(net, parallel.replicated(mesh)), lambda arrays: parallel.put(arrays, rows)


def validate(net: model.Model, held_out: np.ndarray, cfg: Config, mesh: Mesh | None = None
             ) -> Score:  # fmt: skip
    """The per-epoch validation score of the held-out ids, read the way the run trains: in
    window mode at the training stride (the training loss on held-out windows, split over
    `mesh`: ~20k windows of 60 steps are seconds of compute), statefully for a `sequence`
    model (one stream: it cannot be split)."""
    goal = objective.of(cfg)
    return score_ids(
        net, held_out, mode=goal.reading, maxlen=cfg.maxlen, stride=goal.validation_stride,
        mesh=mesh,
    )  # fmt: skip
