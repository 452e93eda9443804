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
    lr_scale: jax.Array  # float32 scalar: 1, halved by the divergence guard after each blow-up
    carry: tuple = ()  # --carry-state: per layer (h, c) float32[batch_size, H] of each stream


class StepContext(NamedTuple):
    """Per-run inputs of the train step that are arrays, not config (so they never recompile)."""

    dropout_key: jax.Array | None = None  # per step: fold_in(key, step), then the device index
    total_steps: jax.Array | int = 0  # optimizer steps of the whole run (for the cosine schedule)


NO_CONTEXT = StepContext()
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


def lr_factor(cfg: Config, step: jax.Array, total_steps) -> jax.Array:
    """The schedule's multiple of --learning-rate at optimizer step `step` (0-based).

    Linear warm-up over `cfg.warmup` steps, then constant 1, or for "cosine" a half cosine from
    1 down to MIN_LR_FRACTION at `total_steps`.
    """
    step = jnp.asarray(step, jnp.float32)
    factor = jnp.float32(1.0)
    if cfg.warmup > 0:
        factor = jnp.minimum(1.0, (step + 1.0) / cfg.warmup)
    if cfg.schedule == "cosine":
        span = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - cfg.warmup, 1.0)
        done = jnp.clip((step - cfg.warmup) / span, 0.0, 1.0)
        cosine = MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + jnp.cos(jnp.pi * done))
        factor = factor * cosine
    return factor


def zero_streams(cfg: Config) -> tuple:
    """The LSTM state every stream starts an epoch from (--carry-state), else ()."""
    if not cfg.carry_state:
        return ()
    zero = jnp.zeros((cfg.batch_size, cfg.hidden), jnp.float32)
    return ((zero, zero),) * cfg.layers


def init_state(key: jax.Array, vocab_size: int, cfg: Config) -> TrainState:
    params = model.init_params(key, vocab_size, cfg.hidden, cfg.layers)
    opt_state = make_optimizer(cfg).init(params)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32)
    return TrainState(params, opt_state, zero, one, zero_streams(cfg))


def state_shape(vocab_size: int, cfg: Config) -> TrainState:
    """The shapes and dtypes of a run's TrainState (what a checkpoint restores into)."""
    return jax.eval_shape(lambda: init_state(jax.random.key(0), vocab_size, cfg))


def epoch_starts(split: int, cfg: Config) -> np.ndarray:
    """The training windows' starts in ids [0, split): the original's windows, or contiguous
    streams (step by step) with --carry-state."""
    if cfg.carry_state:
        return data.stream_starts(split, cfg.batch_size, cfg.maxlen)
    return data.window_starts(split, cfg.maxlen, cfg.step)


def gather(ids: jax.Array, starts: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """A batch's inputs and targets for the objective: targets [B] ("last") or [B, T]."""
    if cfg.objective == "sequence":
        return data.gather_sequences(ids, starts, cfg.maxlen)
    return data.gather_windows(ids, starts, cfg.maxlen)


def loss_and_carry(params: dict, inputs, targets, weights, cfg: Config, key=None, carry=None):
    """(weighted sum of next-char cross-entropies in nats over all predicted chars, final LSTM
    carry); weight-0 rows are padding. With `key`, dropout at `cfg.dropout`; `carry` is the
    initial state (None: zeros), a constant for the gradient (truncated backpropagation).

    Keras computes it from clipped softmax probabilities; on logits it is the same value except
    where a target's probability is below 1e-7, where Keras' clip zeroes the gradient.
    """
    all_steps = cfg.objective == "sequence"
    carry = None if carry is None else lax.stop_gradient(carry)
    carry, logits = model.forward(
        params, inputs, carry, dtype=cfg.dtype, all_steps=all_steps, dropout=cfg.dropout, key=key
    )
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if all_steps:
        losses = losses.sum(axis=-1)
    return jnp.sum(weights * losses), carry


def loss_sum(params: dict, inputs, targets, weights, cfg: Config, key=None) -> jax.Array:
    """The loss part of `loss_and_carry`, from a zero state."""
    return loss_and_carry(params, inputs, targets, weights, cfg, key)[0]


def chars_per_window(cfg: Config) -> int:
    """Predicted chars per window: 1 for the original objective, maxlen for "sequence"."""
    return cfg.maxlen if cfg.objective == "sequence" else 1


def _psum_all(tree, axis_name):
    """Sum a pytree over the mesh axis in one all-reduce (one device sync instead of one per
    leaf: on CPU each all-reduce is a rendezvous of the device threads)."""
    if axis_name is None:
        return tree
    flat, unravel = ravel_pytree(tree)
    return unravel(lax.psum(flat, axis_name))


def train_step(
    state: TrainState,
    inputs,
    targets,
    weights,
    cfg: Config,
    axis_name=None,
    context: StepContext = NO_CONTEXT,
):
    """One optimizer step on a batch -> (new state, mean loss per char). An all-padding batch
    changes nothing.

    Inside `shard_map`, `axis_name` names the mesh axis the batch is split over: loss sums,
    gradient sums and window counts are added across devices, so the step equals the
    single-device step on the whole batch (with dropout, each device draws its own masks).
    """
    params = state.params
    key = None
    if cfg.dropout > 0 and context.dropout_key is not None:
        key = jax.random.fold_in(context.dropout_key, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))
    if axis_name is not None:  # per-device gradients differ until summed: mark them varying
        params = jax.tree.map(lambda p: lax.pcast(p, (axis_name,), to="varying"), params)
    carry = state.carry if cfg.carry_state else None
    (total, carry), grads = jax.value_and_grad(loss_and_carry, has_aux=True)(
        params, inputs, targets, weights, cfg, key, carry
    )
    total, count, grads = _psum_all((total, jnp.sum(weights), grads), axis_name)
    scale = 1.0 / jnp.maximum(count * chars_per_window(cfg), 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, state.params)
    if cfg.schedule != "constant" or cfg.warmup > 0:
        factor = lr_factor(cfg, state.step, context.total_steps)
        updates = jax.tree.map(lambda u: u * factor, updates)
    updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
    params = optax.apply_updates(state.params, updates)
    carry = carry if cfg.carry_state else state.carry
    new = TrainState(params, opt_state, state.step + 1, state.lr_scale, carry)
    state = jax.tree.map(lambda n, o: jnp.where(count > 0, n, o), new, state)
    return state, total * scale


def _train_chunk(state, ids, plan_starts, plan_weights, chunk, context, cfg: Config, mesh: Mesh):
    """Scan `train_step` over the batches of chunk `chunk` of the plan -> (state, losses[K])."""

    def per_device(state, ids, starts, weights, context):
        def body(state, batch):
            inputs, targets = gather(ids, batch[0], cfg)
            return train_step(state, inputs, targets, batch[1], cfg, parallel.AXIS, context)

        if not cfg.carry_state:
            return lax.scan(body, state, (starts, weights))
        # Streams are split over the devices like the batch: each device carries its rows.
        rows = starts.shape[-1]
        index = lax.axis_index(parallel.AXIS)

        def mine(x):
            x = jnp.pad(x, ((0, rows * mesh.size - x.shape[0]), (0, 0)))
            return lax.dynamic_slice_in_dim(x, index * rows, rows)

        def whole(x):  # the rows of all devices again, summed into place (one all-reduce)
            x = lax.dynamic_update_slice_in_dim(
                jnp.zeros((rows * mesh.size, x.shape[1]), x.dtype), x, index * rows, 0
            )
            return lax.psum(x, parallel.AXIS)[: cfg.batch_size]

        state = state._replace(carry=jax.tree.map(mine, state.carry))
        state, losses = lax.scan(body, state, (starts, weights))
        whole = jax.tree.map(whole, state.carry)
        return state._replace(carry=whole), losses

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(None, parallel.AXIS), P(None, parallel.AXIS), P()),
        out_specs=(P(), P()),
    )
    return sharded(state, ids, plan_starts[chunk], plan_weights[chunk], context)


train_chunk = jax.jit(_train_chunk, static_argnames=("cfg", "mesh"), donate_argnums=0)
make_plan = jax.jit(data.epoch_plan, static_argnames=("batch_size", "steps_per_call", "width"))
make_stream_plan = jax.jit(
    data.stream_plan, static_argnames=("batch_size", "steps_per_call", "maxlen", "width")
)


def placed_plan(data_key, epoch: int, starts, cfg: Config, mesh: Mesh):
    """The epoch plan with each batch padded to split evenly over the mesh and sharded on it."""
    width = -(-cfg.batch_size // mesh.size) * mesh.size
    if cfg.carry_state:
        plan = make_stream_plan(
            data_key,
            epoch,
            starts,
            batch_size=cfg.batch_size,
            steps_per_call=cfg.steps_per_call,
            maxlen=cfg.maxlen,
            width=width,
        )
    else:
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
    context: StepContext = NO_CONTEXT,
) -> tuple[TrainState, float]:
    """One pass over all windows in the order of `(data_key, epoch)` (shuffled; with
    --carry-state the streams in order, shifted by an offset) -> (state, mean loss per
    predicted char).

    The mean weighs each batch by its real windows, as Keras' epoch loss does. A non-finite
    loss ends the epoch early (returned as the loss: the rest would be wasted). The input
    state's buffers are donated to the jitted steps: use the returned state, not the old one.
    `mesh` defaults to all devices. After each chunk, `on_chunk(done, total, windows,
    mean_loss)` gets the chunks done and in all, the windows trained so far and their mean loss
    (progress display).
    """
    mesh = mesh or parallel.data_mesh()
    plan_starts, plan_weights = placed_plan(data_key, epoch, starts, cfg, mesh)
    counts = np.asarray(plan_weights.sum(axis=-1))  # real windows per batch [chunks, K]
    if start.chunks == 0:  # every stream starts the epoch from a zero state
        state = state._replace(carry=zero_streams(cfg))
    state, ids = parallel.put((state, ids), parallel.replicated(mesh))
    chunks = plan_starts.shape[0]
    _, loss_sum, windows = start
    for chunk in range(start.chunks, chunks):
        state, losses = train_chunk(
            state, ids, plan_starts, plan_weights, chunk, context, cfg, mesh
        )
        # Waiting for each chunk keeps multi-device CPU runs from queueing calls (which can time
        # out XLA's all-reduce rendezvous), and makes progress reports tell the truth.
        loss_sum += float((np.asarray(losses) * counts[chunk]).sum())
        windows += int(counts[chunk].sum())
        if not np.isfinite(loss_sum):
            return state, loss_sum
        if on_chunk is not None:
            on_chunk(chunk + 1, chunks, windows, loss_sum / windows)
        if stop is not None and stop() and chunk + 1 < chunks:
            raise EpochInterrupted(state, EpochPosition(chunk + 1, loss_sum, windows))
    return state, loss_sum / windows
