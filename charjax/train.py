"""Training: the Keras-3 RMSprop optimizer, next-char cross-entropy, and the jitted steps.

`train_step` is one optimizer step; `train_chunk` (the jit boundary) scans it over
`steps_per_call` batches of an epoch plan, data-parallel over a device mesh, so the host
dispatches once per chunk, not once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from charjax import data, model, parallel
from charjax.config import Config


class EpochPosition(NamedTuple):
    """How far an epoch got: chunks done, and the loss sum and count of the windows trained."""

    chunks: int = 0
    loss_sum: float = 0.0
    windows: int = 0


class EpochInterrupted(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by `train_epoch` when `stop()` asks for it; carries the state and the position."""

    def __init__(self, state, position: EpochPosition):
        super().__init__(f"interrupted after {position.chunks} chunks")
        self.state, self.position = state, position


EPOCH_START = EpochPosition()


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


def loss_sum(params: dict, inputs, targets, weights, dtype: str = "float32") -> jax.Array:
    """Weighted sum of next-char cross-entropies (nats); weight-0 rows are padding.

    Keras computes it from clipped softmax probabilities; on logits it is the same value except
    where a target's probability is below 1e-7, where Keras' clip zeroes the gradient.
    """
    _, logits = model.forward(params, inputs, dtype=dtype)
    return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def _psum_all(tree, axis_name):
    """Sum a pytree over the mesh axis in one all-reduce (one device sync instead of one per
    leaf: on CPU each all-reduce is a rendezvous of the device threads)."""
    if axis_name is None:
        return tree
    flat, unravel = ravel_pytree(tree)
    return unravel(lax.psum(flat, axis_name))


def train_step(state: TrainState, inputs, targets, weights, cfg: Config, axis_name=None):
    """One RMSprop step on a batch -> (new state, mean loss). An all-padding batch changes nothing.

    Inside `shard_map`, `axis_name` names the mesh axis the batch is split over: loss sums,
    gradient sums and window counts are added across devices, so the step equals the
    single-device step on the whole batch.
    """
    params = state.params
    if axis_name is not None:  # per-device gradients differ until summed: mark them varying
        params = jax.tree.map(lambda p: lax.pcast(p, (axis_name,), to="varying"), params)
    total, grads = jax.value_and_grad(loss_sum)(params, inputs, targets, weights, cfg.dtype)
    total, count, grads = _psum_all((total, jnp.sum(weights), grads), axis_name)
    scale = 1.0 / jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
    state = jax.tree.map(lambda n, o: jnp.where(count > 0, n, o), new, state)
    return state, total * scale


def _train_chunk(state, ids, plan_starts, plan_weights, chunk, cfg: Config, mesh: Mesh):
    """Scan `train_step` over the batches of chunk `chunk` of the plan -> (state, losses[K])."""

    def per_device(state, ids, starts, weights):
        def body(state, batch):
            inputs, targets = data.gather_windows(ids, batch[0], cfg.maxlen)
            return train_step(state, inputs, targets, batch[1], cfg, parallel.AXIS)

        return lax.scan(body, state, (starts, weights))

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(None, parallel.AXIS), P(None, parallel.AXIS)),
        out_specs=(P(), P()),
    )
    return sharded(state, ids, plan_starts[chunk], plan_weights[chunk])


train_chunk = jax.jit(_train_chunk, static_argnames=("cfg", "mesh"), donate_argnums=0)
make_plan = jax.jit(data.epoch_plan, static_argnames=("batch_size", "steps_per_call", "width"))


def placed_plan(data_key, epoch: int, starts, cfg: Config, mesh: Mesh):
    """The epoch plan with each batch padded to split evenly over the mesh and sharded on it."""
    width = -(-cfg.batch_size // mesh.size) * mesh.size
    plan = make_plan(
        data_key,
        epoch,
        starts,
        batch_size=cfg.batch_size,
        steps_per_call=cfg.steps_per_call,
        width=width,
    )
    return parallel.put(plan, parallel.batch_sharded(mesh))


def train_epoch(
    state: TrainState,
    ids: jax.Array,
    starts: jax.Array,
    data_key: jax.Array,
    epoch: int,
    cfg: Config,
    mesh: Mesh | None = None,
    on_chunk: Callable[[int, int, int, float], None] | None = None,
    start: EpochPosition = EPOCH_START,
    stop: Callable[[], bool] | None = None,
) -> tuple[TrainState, float]:
    """One pass over all windows in the order of `(data_key, epoch)` -> (state, mean window loss).

    The mean weighs each batch by its real windows, as Keras' epoch loss does. The input
    state's buffers are donated to the jitted steps: use the returned state, not the old one.
    `mesh` defaults to all devices. After each chunk, `on_chunk(done, total, windows,
    mean_loss)` gets the chunks done and in all, the windows trained so far and their mean loss
    (progress display).
    """
    mesh = mesh or parallel.data_mesh()
    plan_starts, plan_weights = placed_plan(data_key, epoch, starts, cfg, mesh)
    counts = np.asarray(plan_weights.sum(axis=-1))  # real windows per batch [chunks, K]
    state, ids = parallel.put((state, ids), parallel.replicated(mesh))
    chunks = plan_starts.shape[0]
    _, loss_sum, windows = start
    for chunk in range(start.chunks, chunks):
        state, losses = train_chunk(state, ids, plan_starts, plan_weights, chunk, cfg, mesh)
        # Waiting for each chunk keeps multi-device CPU runs from queueing calls (which can time
        # out XLA's all-reduce rendezvous), and makes progress reports tell the truth.
        loss_sum += float((np.asarray(losses) * counts[chunk]).sum())
        windows += int(counts[chunk].sum())
        if on_chunk is not None:
            on_chunk(chunk + 1, chunks, windows, loss_sum / windows)
        if stop is not None and stop() and chunk + 1 < chunks:
            raise EpochInterrupted(state, EpochPosition(chunk + 1, loss_sum, windows))
    return state, loss_sum / windows
