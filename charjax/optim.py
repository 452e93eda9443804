"""The update rule: Keras-3 RMSprop or Adam, gradient clipping, and the learning-rate schedule.

`make_optimizer(cfg)` is the optax transformation at the base rate; `lr_factor` is the
schedule's multiple of it at a step (the train step scales the updates by it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from charjax.config import Config

MIN_LR_FRACTION = 0.05  # the cosine schedule decays to this fraction of --learning-rate


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The update rule at the base learning rate (schedule and guard scale its output).

    RMSprop has Keras 3 semantics: v = rho*v + (1-rho)*g^2; p -= lr*g/sqrt(v + eps); optax's
    `eps_in_sqrt=True` puts epsilon inside the square root, as Keras 3 does. Keras 2.0.8 (the
    book's version) used `lr*g/(sqrt(v) + eps)` with eps=1e-8; the two differ only while v is
    tiny (~eps), i.e. for parameters whose gradients are almost always zero. Adam uses Keras'
    defaults (beta 0.9 / 0.999) with the same epsilon. `--clip-norm` clips the gradients' global
    norm first.
    """
    if cfg.optimizer == "adam":
        opt = optax.adam(cfg.learning_rate, b1=0.9, b2=0.999, eps=cfg.epsilon)
    else:
        opt = optax.rmsprop(cfg.learning_rate, decay=cfg.rho, eps=cfg.epsilon, eps_in_sqrt=True)
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def scheduled(cfg: Config) -> bool:
    """Whether the learning rate changes over the run (warm-up or a decay)."""
    return cfg.schedule != "constant" or cfg.warmup > 0


def lr_factor(cfg: Config, step: jax.Array, total_steps) -> jax.Array:
    """The schedule's multiple of --learning-rate at optimizer step `step` (0-based).

    Linear warm-up over `cfg.warmup` steps, then constant 1; for "cosine" a half cosine from
    1 down to MIN_LR_FRACTION at `total_steps`, for "linear" a straight line down to 0 there
    (the last step's factor is 1 / the steps after warm-up, not 0).
    """
    step = jnp.asarray(step, jnp.float32)
    factor = jnp.float32(1.0)
    if cfg.warmup > 0:
        factor = jnp.minimum(1.0, (step + 1.0) / cfg.warmup)
    if cfg.schedule in ("cosine", "linear"):
        span = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - cfg.warmup, 1.0)
        done = jnp.clip((step - cfg.warmup) / span, 0.0, 1.0)
        if cfg.schedule == "cosine":
            decay = MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + jnp.cos(jnp.pi * done))
        else:
            decay = jnp.maximum(1.0 - done, 1.0 / span)
        factor = factor * decay
    return factor
