"""Training: the Keras-3 RMSprop optimizer, next-char cross-entropy, and the jitted steps.

`train_step` is one optimizer step; `train_chunk` (the jit boundary) scans it over
`steps_per_call` batches of an epoch plan so the host dispatches once per chunk, not per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from charjax import data, model
from charjax.config import Config


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: optimizer steps taken


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """RMSprop with Keras 3 semantics: v = rho*v + (1-rho)*g^2; p -= lr*g/sqrt(v + eps).

    optax's `eps_in_sqrt=True` puts epsilon inside the square root, as Keras 3 does. Keras 2.0.8
    (the book's version) used `lr*g/(sqrt(v) + eps)` with eps=1e-8; the two differ only while
    v is tiny (~eps), i.e. for parameters whose gradients are almost always zero.
    """
    return optax.rmsprop(cfg.learning_rate, decay=cfg.rho, eps=cfg.epsilon, eps_in_sqrt=True)


def init_state(key: jax.Array, vocab_size: int, cfg: Config) -> TrainState:
    params = model.init_params(key, vocab_size, cfg.hidden)
    opt_state = make_optimizer(cfg).init(params)
    return TrainState(params, opt_state, jnp.zeros((), jnp.int32))


def loss_fn(params: dict, inputs: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy of the next char (nats); weight-0 rows are padding.

    Keras computes it from clipped softmax probabilities; on logits it is the same value except
    where a target's probability is below 1e-7, where Keras' clip zeroes the gradient.
    """
    _, logits = model.forward(params, inputs)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1.0)


def train_step(state: TrainState, inputs, targets, weights, cfg: Config):
    """One RMSprop step on a batch -> (new state, loss). An all-padding batch changes nothing."""
    loss, grads = jax.value_and_grad(loss_fn)(state.params, inputs, targets, weights)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
    active = jnp.sum(weights) > 0
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), loss


def _train_chunk(state, ids, plan_starts, plan_weights, chunk, cfg: Config):
    """Scan `train_step` over the batches of chunk `chunk` of the plan -> (state, losses[K])."""

    def body(state, batch):
        starts, weights = batch
        inputs, targets = data.gather_windows(ids, starts, cfg.maxlen)
        return train_step(state, inputs, targets, weights, cfg)

    return lax.scan(body, state, (plan_starts[chunk], plan_weights[chunk]))


train_chunk = jax.jit(_train_chunk, static_argnames="cfg", donate_argnums=0)
make_plan = jax.jit(data.epoch_plan, static_argnames=("batch_size", "steps_per_call"))


def train_epoch(
    state: TrainState,
    ids: jax.Array,
    starts: jax.Array,
    data_key: jax.Array,
    epoch: int,
    cfg: Config,
    on_chunk: Callable[[int, int], None] | None = None,
) -> tuple[TrainState, float]:
    """One pass over all windows in the order of `(data_key, epoch)` -> (state, mean window loss).

    The mean weighs each batch by its real windows, as Keras' epoch loss does.
    `on_chunk(done, total)` is called after each chunk is dispatched (progress display).
    """
    plan_starts, plan_weights = make_plan(
        data_key, epoch, starts, batch_size=cfg.batch_size, steps_per_call=cfg.steps_per_call
    )
    chunks = plan_starts.shape[0]
    losses = []
    for chunk in range(chunks):
        state, chunk_losses = train_chunk(state, ids, plan_starts, plan_weights, chunk, cfg)
        losses.append(chunk_losses)
        if on_chunk is not None:
            on_chunk(chunk + 1, chunks)
    counts = np.asarray(plan_weights.sum(axis=-1))  # real windows per batch [chunks, K]
    batch_losses = np.asarray(jnp.stack(losses))
    return state, float((batch_losses * counts).sum() / counts.sum())
