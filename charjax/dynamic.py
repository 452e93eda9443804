"""Dynamic evaluation (Krause et al. 2018): read a text statefully, `segment` chars at a time,
and after scoring each segment take a gradient step on it, so that later text is predicted by
a model that has adapted to the text so far. A different protocol from the static score
(`evaluate.score_ids`): reported beside it, never instead.

Two update rules: plain SGD, and Krause et al.'s RMS rule (each weight's step divided by its
gradient's root mean square on the training text, `gradient_rms`). Both pull the weights back
towards the trained ones. `record` is what `charjax-score --dynamic` reports: the rule's
default rate and decay (`DEFAULTS`), or with tuning the best of `TUNE_GRID` on the end of the
training text (never the scored text).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from charjax import model
from charjax.errors import CharjaxError
from charjax.evaluate import Score, losses, padded_pieces, stream_nats

# (rate, decay) per rule, tuned on a slice of the training text (not the scored tail): rms on
# --preset quality's model (2026-12-06), sgd on the LSTM recipe's; docs/results.md, "Dynamic
# evaluation", has the tuning.
DEFAULTS = {"sgd": (0.2, 0.0), "rms": (3e-4, 0.1)}
RULES = tuple(DEFAULTS)
DEFAULT_RULE = "rms"
RMS_EPSILON = 2e-5  # Krause et al. 2018's epsilon under the gradient's RMS
RMS_CHARS = 100_000  # training chars behind the RMS rule's gradient statistics (seconds of work)
# Tuning: the (rate, decay) pairs tried per rule, on the last TUNE_CHARS training chars (README
# "Results": the grids around the presets' best values).
TUNE_CHARS = 30_000
TUNE_GRID = {
    "sgd": ((0.03, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0)),
    "rms": tuple((r, d) for r in (1e-4, 2e-4, 3e-4, 5e-4) for d in (0.02, 0.05, 0.1)),
}


class Settings(NamedTuple):
    """How to evaluate dynamically: `rule` ("sgd" or "rms"), its step size `rate` on the mean
    loss and `decay` back to the trained weights per step; `rate` None: tuned (`record`)."""

    rate: float | None
    decay: float | None
    rule: str


def settings(rule: str = DEFAULT_RULE, rate=None, decay=None, *, tune: bool = False) -> Settings:
    """The settings of `rule`: the given `rate` and `decay`, each by default the rule's
    (`DEFAULTS`); with `tune`, both left to tuning (and then they may not be given)."""
    if rule not in DEFAULTS:
        raise CharjaxError(f"--dynamic-rule must be one of {', '.join(RULES)}, got {rule!r}")
    if tune:
        if rate is not None or decay is not None:
            raise CharjaxError(
                "--dynamic-tune chooses --dynamic-lr and --dynamic-decay itself: pass one or the "
                "others"
            )
        return Settings(None, None, rule)
    default_rate, default_decay = DEFAULTS[rule]
    return Settings(
        default_rate if rate is None else rate, default_decay if decay is None else decay, rule
    )


class Rms(NamedTuple):
    """Gradient statistics of the training text for the RMS rule (`gradient_rms`), pytrees
    shaped like the parameters: `scale`, the root mean square of the mean-loss gradient per
    weight (each step is divided by it); `pull`, that scale over the sum of its per-tensor
    means (each weight's share of the decay back to the trained value)."""

    scale: dict
    pull: dict


@jax.jit
def _adapt(net, base, carry, inputs, targets, valid, rate, decay, rms):
    """Score one segment (inputs/targets int[L], valid bool[L]) from `carry`, then take one
    gradient step on it -> (the model `net` after it, carry after the segment, summed nats
    scored *before* the step).

    The step is on the segment's mean loss, pulled back towards the trained parameters `base`
    (Krause et al. 2018's dynamic evaluation with decay to the global parameters): plain SGD
    (`rms` None: p - rate g + decay (base - p)), or their RMS rule (`rms` an `Rms`: the
    gradient divided by its training RMS, each weight pulled back by decay x its share,
    at most all the way)."""

    def nats(net):
        after, total = stream_nats(net, carry, inputs, targets, valid)
        return total, after

    (total, after), grads = jax.value_and_grad(nats, has_aux=True)(net)
    grads = jax.tree.map(lambda g: g / jnp.maximum(jnp.sum(valid), 1), grads)  # of the mean
    if rms is None:
        net = jax.tree.map(lambda p, g, b: p - rate * g + decay * (b - p), net, grads, base)
    else:
        net = jax.tree.map(
            lambda p, g, b, s, w: p - rate * g / (s + RMS_EPSILON)
            + jnp.minimum(decay * w, 1.0) * (b - p),
            net, grads, base, rms.scale, rms.pull,
        )  # fmt: skip
    return net, after, total


@jax.jit
def _squared_grads(net, total, carry, inputs, targets):
    """Add the squared gradient of the mean loss of one step of streams (inputs/targets
    int[S, L], read on from `carry`) to `total` -> (total, carry after the step)."""

    def loss(net):
        after, each = losses(net, carry, inputs, targets, None)
        return jnp.mean(each), after

    grads, after = jax.grad(loss, has_aux=True)(net)
    return jax.tree.map(lambda t, g: t + g * g, total, grads), after


def gradient_rms(net: model.Model, ids, *, segment: int, streams: int = 16) -> Rms:
    """Krause et al. 2018's statistics for the RMS rule, from training text ids int[n]: the
    text read as `streams` carried streams, `segment` chars a step, and the root mean square
    over the steps of each weight's mean-loss gradient (Rms.scale)."""
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
    total = jax.tree.map(jnp.zeros_like, net)
    carry = net.spec.zero_carry(streams)
    for begin in range(0, used, segment):
        piece = slice(begin, begin + segment)
        total, carry = _squared_grads(net, total, carry, inputs[:, piece], targets[:, piece])
    scale = jax.tree.map(lambda t: jnp.sqrt(t / steps), total)
    norm = sum(jnp.mean(s) for s in jax.tree.leaves(scale))
    return Rms(scale, jax.tree.map(lambda s: s / norm, scale))


def score(
    net: model.Model,
    ids,
    *,
    rate: float,
    decay: float,
    segment: int,
    rms: Rms | None = None,
    progress=None,
) -> Score:
    """Dynamic evaluation of ids int[n]: read statefully, `segment` chars at a time; each
    segment is scored, then the model takes a gradient step on it (`_adapt`: SGD, or the RMS
    rule with `rms` from `gradient_rms`). Every char from the second on is scored, as in
    stateful `evaluate.score_ids`; at rate 0 the score is the static stateful one.
    `progress(done, total)`, if given, hears after each segment how many chars are scored."""
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
    base = net
    carry = net.spec.zero_carry(1)
    rate, decay = jnp.float32(rate), jnp.float32(decay)
    total, done = 0.0, 0
    for (piece, valid), (target, _) in zip(
        padded_pieces(inputs, size), padded_pieces(targets, size), strict=True
    ):
        net, carry, nats = _adapt(net, base, carry, piece, target, valid > 0, rate, decay, rms)
        total += float(nats)
        done += int(valid.sum())
        progress(done, len(targets))
    return Score(total, len(targets))


def record(
    net: model.Model,
    ids,
    training,
    chosen: Settings,
    *,
    segment: int,
    progress=None,
) -> dict:
    """The dynamic evaluation of ids int[n] as a JSON-ready record (rule, lr, decay, segment,
    chars scored, nats and bits per char, perplexity): `score` in segments of `segment` chars
    by `chosen`. `training()` gives the ids the model was trained on (its held-out tail cut
    off), called only when needed: the RMS rule's statistics come from their last RMS_CHARS,
    and with `chosen.rate` None the rate and decay are the best of TUNE_GRID[rule] on their
    last TUNE_CHARS (then the record also has "tuned_on_chars" and "tried")."""
    run = functools.partial(score, net, segment=segment)
    rate, decay, rule = chosen
    train = training() if rule == "rms" or rate is None else None
    rms = None
    if rule == "rms":
        rms = gradient_rms(net, _last(train, RMS_CHARS), segment=segment)
    tuned = {}
    if rate is None:
        rate, decay, tuned = _tune(run, _last(train, TUNE_CHARS), TUNE_GRID[rule], rms)
    adapted = run(ids, rate=rate, decay=decay, rms=rms, progress=progress)
    return {
        "rule": rule, "lr": rate, "decay": decay, "segment": segment,
        "chars_scored": adapted.chars, "nats_per_char": adapted.nats_per_char,
        "bits_per_char": adapted.bits_per_char, "perplexity": adapted.perplexity, **tuned,
    }  # fmt: skip


def _tune(run, piece, grid, rms) -> tuple[float, float, dict]:
    """(rate, decay) of `grid` with the lowest `run` score of ids `piece`, and the record of
    the tuning: the chars it used and every pair's nats/char."""
    tried = [
        {"lr": r, "decay": d, "nats_per_char": run(piece, rate=r, decay=d, rms=rms).nats_per_char}
        for r, d in grid
    ]
    best = min(tried, key=lambda t: _finite_or_inf(t["nats_per_char"]))
    return best["lr"], best["decay"], {"tuned_on_chars": len(piece), "tried": tried}


def _last(ids, n: int):
    return ids[max(0, len(ids) - n) :]


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf
