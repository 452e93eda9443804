"""How well a model predicts a text: cross-entropy in nats and bits per char, and perplexity
(`score_ids`), and the per-epoch validation of a run's held-out tail (`validate`).

Two ways to read a text, matching the two ways to sample:
- "window" (the original objective): each scored char is predicted from the `maxlen` chars
  before it, from a zero state, exactly like a training window. The first `maxlen` chars have
  no full window and are not scored; `stride` > 1 scores every stride-th char only.
- "stateful" (how a `sequence` model reads): one pass over the whole text carrying the LSTM
  state, every char from the second on predicted from everything before it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

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


@functools.partial(jax.jit, static_argnames=("maxlen", "dtype"))
def _window_nats(params, inputs, targets, weights, *, maxlen: int, dtype):
    """The training loss of the original objective on these windows (`step.nll`)."""
    last_char = _last_char(maxlen)
    return step.nll(params, inputs, targets, weights, last_char, dtype=dtype)[0]


def _last_char(maxlen: int) -> objective.Objective:
    """The original objective: the char after each window."""
    return objective.Objective(maxlen, 1, 1, False, False)


def _losses(params, carry, inputs, targets, valid, dtype):
    """Read ids inputs int[B, L] on from `carry` -> (carry after them, float32[B, L] nats of
    each target int[B, L]); `valid` bool[L] or None as in `model.forward`."""
    carry, logits = model.forward(params, inputs, carry, valid, dtype, all_steps=True)
    return carry, optax.softmax_cross_entropy_with_integer_labels(logits, targets.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _stream_nats(params, carry, inputs, targets, valid, *, dtype):
    carry, losses = _losses(params, carry, inputs[None], targets[None], valid, dtype)
    return carry, jnp.sum(jnp.where(valid, losses[0], 0.0))


def _batches(values: np.ndarray, size: int):
    """Fixed-size pieces of `values` (the last zero-padded) with a 0/1 weight per slot, so one
    compilation serves every piece."""
    for begin in range(0, len(values), size):
        piece = values[begin : begin + size]
        pad = size - len(piece)
        yield np.pad(piece, (0, pad)), np.pad(np.ones(len(piece), np.float32), (0, pad))


def score_ids(
    params: dict,
    ids,
    *,
    mode: str = "window",
    maxlen: int = 60,
    stride: int = 1,
    batch_size: int = 512,
    chunk: int = 1024,
    dtype: str = "float32",
    progress=None,
    mesh: Mesh | None = None,
) -> Score:
    """Score the id sequence `ids` (int32[n]) under `params`; see the module docstring.
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
        params, place = _spread(params, mesh, size)
        for begin in range(0, windows, size):
            index = begin + np.arange(size)
            weights = (index < windows).astype(np.float32)
            starts = np.where(index < windows, index, 0) * stride
            inputs, targets, weights = place((*_last_char(maxlen).batch(ids, starts), weights))
            total += float(
                _window_nats(params, inputs, targets, weights, maxlen=maxlen, dtype=dtype)
            )
            done += int(weights.sum())
            progress(done, windows)
        return Score(total, windows)
    if len(ids) < 2:
        raise CharjaxError("a text needs at least 2 chars to be scored")
    inputs, targets = ids[:-1], ids[1:]
    size = min(chunk, len(inputs))
    carry, total = model.zero_carry(1, model.shape_of(params)[1], model.layers_of(params)), 0.0
    done = 0
    for (piece, valid), (target, _) in zip(
        _batches(inputs, size), _batches(targets, size), strict=True
    ):
        carry, nats = _stream_nats(params, carry, piece, target, valid > 0, dtype=dtype)
        total += float(nats)
        done += int(valid.sum())
        progress(done, len(targets))
    return Score(total, len(targets))


def _spread(params: dict, mesh: Mesh | None, size: int):
    """(params, place): on a `mesh` of several devices that split a batch of `size` evenly,
    params replicated on it and `place` putting a batch's arrays split along their first axis;
    otherwise both unchanged (one device)."""
    if mesh is None or mesh.size < 2 or size % mesh.size:
        return params, lambda arrays: arrays
    rows = NamedSharding(mesh, PartitionSpec(parallel.AXIS))
    return parallel.put(params, parallel.replicated(mesh)), lambda arrays: parallel.put(
        arrays, rows
    )


def validate(params: dict, held_out: np.ndarray, cfg: Config, mesh: Mesh | None = None) -> Score:
    """The per-epoch validation score of the held-out ids, read the way the run trains: in
    window mode at the training stride (the training loss on held-out windows, split over
    `mesh`: ~20k windows of 60 steps are seconds of compute), statefully for a `sequence`
    model (one stream: it cannot be split)."""
    goal = objective.of(cfg)
    return score_ids(
        params,
        held_out,
        mode=goal.reading,
        maxlen=cfg.maxlen,
        stride=goal.validation_stride,
        dtype=cfg.dtype,
        mesh=mesh,
    )


RMS_EPSILON = 2e-5  # Krause et al. 2018's epsilon under the gradient's RMS


class Rms(NamedTuple):
    """Gradient statistics of the training text for the RMS rule of dynamic evaluation
    (`gradient_rms`), pytrees shaped like the parameters: `scale`, the root mean square of the
    mean-loss gradient per weight (each step is divided by it); `pull`, that scale over the sum
    of its per-tensor means (each weight's share of the decay back to the trained value)."""

    scale: dict
    pull: dict


@functools.partial(jax.jit, static_argnames=("dtype",))
def _adapt(params, base, carry, inputs, targets, valid, rate, decay, rms, *, dtype):
    """Score one segment (inputs/targets int[L], valid bool[L]) from `carry`, then take one
    gradient step on it -> (params, carry after it, summed nats scored *before* the step).

    The step is on the segment's mean loss, pulled back towards the trained parameters `base`
    (Krause et al. 2018's dynamic evaluation with decay to the global parameters): plain SGD
    (`rms` None: p - rate g + decay (base - p)), or their RMS rule (`rms` an `Rms`: the
    gradient divided by its training RMS, each weight pulled back by decay x its share,
    at most all the way)."""

    def nats(p):
        after, total = _stream_nats(p, carry, inputs, targets, valid, dtype=dtype)
        return total, after

    (total, after), grads = jax.value_and_grad(nats, has_aux=True)(params)
    grads = jax.tree.map(lambda g: g / jnp.maximum(jnp.sum(valid), 1), grads)  # of the mean
    if rms is None:
        params = jax.tree.map(lambda p, g, b: p - rate * g + decay * (b - p), params, grads, base)
    else:
        params = jax.tree.map(
            lambda p, g, b, s, w: p - rate * g / (s + RMS_EPSILON)
            + jnp.minimum(decay * w, 1.0) * (b - p),
            params, grads, base, rms.scale, rms.pull,
        )  # fmt: skip
    return params, after, total


@functools.partial(jax.jit, static_argnames=("dtype",))
def _squared_grads(params, total, carry, inputs, targets, *, dtype):
    """Add the squared gradient of the mean loss of one step of streams (inputs/targets
    int[S, L], read on from `carry`) to `total` -> (total, carry after the step)."""

    def loss(p):
        after, losses = _losses(p, carry, inputs, targets, None, dtype)
        return jnp.mean(losses), after

    grads, after = jax.grad(loss, has_aux=True)(params)
    return jax.tree.map(lambda t, g: t + g * g, total, grads), after


def gradient_rms(
    params: dict, ids, *, segment: int, streams: int = 16, dtype: str = "float32"
) -> Rms:
    """Krause et al. 2018's statistics for RMS dynamic evaluation, from training text ids
    int[n]: the text read as `streams` carried streams, `segment` chars a step, and the root
    mean square over the steps of each weight's mean-loss gradient (Rms.scale)."""
    ids = np.asarray(ids)
    streams = max(1, min(streams, (len(ids) - 1) // segment))  # fewer for a short text
    per_stream = (len(ids) - 1) // streams
    steps = per_stream // segment
    if steps < 1:
        raise CharjaxError(
            f"RMS dynamic evaluation needs more than {segment} chars of training text for its "
            f"gradient statistics, got {len(ids):,}: use --dynamic-rule sgd"
        )
    used = steps * segment
    inputs = ids[: streams * per_stream].reshape(streams, per_stream)[:, :used]
    targets = ids[1 : streams * per_stream + 1].reshape(streams, per_stream)[:, :used]
    total = jax.tree.map(jnp.zeros_like, params)
    carry = model.zero_carry(streams, model.shape_of(params)[1], model.layers_of(params))
    for begin in range(0, used, segment):
        piece = slice(begin, begin + segment)
        total, carry = _squared_grads(
            params, total, carry, inputs[:, piece], targets[:, piece], dtype=dtype
        )
    scale = jax.tree.map(lambda t: jnp.sqrt(t / steps), total)
    norm = sum(jnp.mean(s) for s in jax.tree.leaves(scale))
    return Rms(scale, jax.tree.map(lambda s: s / norm, scale))


def dynamic_score(
    params: dict,
    ids,
    *,
    rate: float,
    decay: float,
    segment: int,
    rms: Rms | None = None,
    dtype: str = "float32",
    progress=None,
) -> Score:
    """Dynamic evaluation of ids int[n]: read statefully, `segment` chars at a time; each
    segment is scored, then the model takes a gradient step on it (`_adapt`: SGD, or the RMS
    rule with `rms` from `gradient_rms`), so later text is predicted by a model that has
    adapted to the text so far. Every char from the second on is scored, as in stateful
    `score_ids`; at rate 0 the score is the static stateful one. A different protocol from the
    static score: report it beside that, never instead."""
    progress = progress or (lambda done, total: None)
    if not (math.isfinite(rate) and rate >= 0 and 0 <= decay < 1):
        raise CharjaxError(
            f"dynamic evaluation needs --dynamic-lr >= 0 and --dynamic-decay in [0, 1), got "
            f"{rate} and {decay}"
        )
    ids = np.asarray(ids)
    if len(ids) < 2:
        raise CharjaxError("a text needs at least 2 chars to be scored")
    inputs, targets = ids[:-1], ids[1:]
    size = min(segment, len(inputs))
    base = params
    carry = model.zero_carry(1, model.shape_of(params)[1], model.layers_of(params))
    rate, decay = jnp.float32(rate), jnp.float32(decay)
    total, done = 0.0, 0
    for (piece, valid), (target, _) in zip(
        _batches(inputs, size), _batches(targets, size), strict=True
    ):
        params, carry, nats = _adapt(
            params, base, carry, piece, target, valid > 0, rate, decay, rms, dtype=dtype
        )
        total += float(nats)
        done += int(valid.sum())
        progress(done, len(targets))
    return Score(total, len(targets))
