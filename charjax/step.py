"""One optimizer step and the jitted chunk of steps: `TrainState`, the loss, `train_step`.

`train_step(state, batch...) -> (state, metrics)` is pure; `train_chunk` (the jit boundary)
scans it over a chunk of `steps_per_call` batches, data-parallel over a device mesh, so the
host dispatches once per chunk. Each step builds its `Draws` (masks' keys, window length)
once and passes it down to the model. The step's metrics dict is the one place to add a metric:
the epoch averages every entry and the progress bar, epoch line and metrics.jsonl show it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from charjax import model, objective, optim, parallel
from charjax.config import Config
from charjax.draws import NONE, Draws


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: optimizer steps taken
    lr_scale: jax.Array  # float32 scalar: 1, halved by the divergence guard after each blow-up
    carry: tuple = ()  # --carry-state: per layer (h, c) float32[batch_size, H] of each stream
    ema: dict | tuple = ()  # --ema: the parameters' moving average (a params tree), else ()


class StepContext(NamedTuple):
    """Per-run inputs of the train step that are arrays, not config (so they never recompile).
    What each step draws from them is its `Draws` (`step_draws`)."""

    dropout_key: jax.Array | None = None  # the run's key of every step's masks; None: no masks
    total_steps: jax.Array | int = 0  # optimizer steps of the whole run (for the cosine schedule)


NO_CONTEXT = StepContext()
# fold_in data of a step's weight-drop and recurrent dropout keys (never a device index, which
# dropout folds in)
WEIGHT_MASKS = 2**31 - 1
RECURRENT_MASKS = 2**31 - 2


def zero_streams(cfg: Config) -> tuple:
    """The state every carried stream starts an epoch from (--carry-state), else ()."""
    if not objective.of(cfg).carried:
        return ()
    return model.zero_carry(cfg.batch_size, cfg.hidden, cfg.layers)


def bind(cfg: Config, params: dict) -> model.Model:
    """The run's model: the `Spec` its Config describes, over the vocabulary its parameters
    were built for (the corpus decides it, not the Config: the output layer's size), bound to
    `params`."""
    return model.Model(model.Spec.of(cfg, params["dense"]["bias"].shape[-1]), params)


def init_state(key: jax.Array, vocab_size: int, cfg: Config) -> TrainState:
    params = model.Spec.of(cfg, vocab_size).init(key)
    opt_state = optim.make_optimizer(cfg).init(params)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32)
    ema = jax.tree.map(jnp.copy, params) if cfg.ema else ()
    return TrainState(params, opt_state, zero, one, zero_streams(cfg), ema)


def eval_params(state: TrainState) -> dict:
    """The parameters a run validates, samples and scores with: the moving average under
    --ema, else the trained ones."""
    return state.ema if isinstance(state.ema, dict) else state.params


def state_shape(vocab_size: int, cfg: Config) -> TrainState:
    """The shapes and dtypes of a run's TrainState (what a checkpoint restores into)."""
    return jax.eval_shape(lambda: init_state(jax.random.key(0), vocab_size, cfg))


def nll(net: model.Model, inputs, targets, weights, goal, *, draws=NONE, carry=None):
    """(weighted sum of next-char cross-entropies in nats over the predicted chars of `goal`
    (an `Objective`), final carry); weight-0 rows are padding. `draws`: the training step's
    masks and window length (see `Draws`; with a length the final carry is the state there and
    later positions are padding). `carry` is the initial state (None: zeros), a constant for
    the gradient (truncated BPTT).

    Keras computes it from clipped softmax probabilities; on logits it is the same value except
    where a target's probability is below 1e-7, where Keras' clip zeroes the gradient.
    """
    carry = None if carry is None else lax.stop_gradient(carry)
    carry, logits = net(inputs, carry, all_steps=goal.every_position, draws=draws)
    return jnp.sum(weights * goal.window_losses(logits, targets, draws.length)), carry


def run_nll(params: dict, inputs, targets, weights, cfg: Config, draws=NONE, carry=None):
    """`nll` as the run `cfg` computes it (its model and objective)."""
    goal = objective.of(cfg)
    return nll(bind(cfg, params), inputs, targets, weights, goal, draws=draws, carry=carry)


def loss_sum(params: dict, inputs, targets, weights, cfg: Config) -> jax.Array:
    """The run's loss sum of a batch (`nll` with its objective), from a zero state, no masks."""
    return run_nll(params, inputs, targets, weights, cfg)[0]


def step_draws(cfg: Config, context: StepContext, step, rows: int, axis_name=None,
               length=None) -> Draws:  # fmt: skip
    """What optimizer step `step` draws (its keys fold the run's key with the step; no run key:
    nothing): each device its own dropout masks, as for its own rows; the same weight-drop
    masks on every device (one per batch); recurrent dropout masks by a row's index in the
    whole batch (`rows` per device). `length` (int32 scalar, --vary-length): the windows'."""
    draws = Draws(cfg.dropout, cfg.locked_dropout, cfg.weight_drop, cfg.recurrent_dropout,
                  length=length)  # fmt: skip
    if context.dropout_key is None:
        return draws
    step_key = jax.random.fold_in(context.dropout_key, step)
    device = None if axis_name is None else lax.axis_index(axis_name)
    if cfg.dropout > 0:
        key = step_key if device is None else jax.random.fold_in(step_key, device)
        draws = draws.replace(dropout_key=key)
    if cfg.weight_drop > 0:
        draws = draws.replace(weight_key=jax.random.fold_in(step_key, WEIGHT_MASKS))
    if cfg.recurrent_dropout > 0:
        first_row = 0 if device is None else device * rows
        key = jax.random.fold_in(step_key, RECURRENT_MASKS)
        draws = draws.replace(recurrent_key=key, first_row=first_row)
    return draws


def _psum_all(tree, axis_name):
    """Sum a pytree over the mesh axis in one all-reduce (one device sync instead of one per
    leaf: on CPU each all-reduce is a rendezvous of the device threads)."""
    if axis_name is None:
        return tree
    flat, unravel = ravel_pytree(tree)
    return unravel(lax.psum(flat, axis_name))


def train_step(
    state, inputs, targets, weights, cfg: Config, axis_name=None, context=NO_CONTEXT, length=None
):
    """One optimizer step on a batch -> (new state, metrics {"loss": mean nats per predicted
    char}). An all-padding batch changes nothing. `length` (int32 scalar, --vary-length): the
    batch's windows are that long (see `nll`), and the step's size is scaled by length / maxlen
    (AWD-LSTM's rule: a longer window, a larger step).

    Inside `shard_map`, `axis_name` names the mesh axis the batch is split over: loss sums,
    gradient sums and window counts are added across devices, so the step equals the
    single-device step on the whole batch (with dropout, each device draws its own masks).
    """
    goal = objective.of(cfg)
    draws = step_draws(cfg, context, state.step, inputs.shape[0], axis_name, length)
    params = state.params
    if axis_name is not None:  # per-device gradients differ until summed: mark them varying
        params = jax.tree.map(lambda p: lax.pcast(p, (axis_name,), to="varying"), params)
    carry = state.carry if goal.carried else None
    (total, carry), grads = jax.value_and_grad(run_nll, has_aux=True)(
        params, inputs, targets, weights, cfg, draws, carry
    )
    total, count, grads = _psum_all((total, jnp.sum(weights), grads), axis_name)
    chars = goal.chars_per_window if length is None else length
    scale = 1.0 / jnp.maximum(count * chars, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = optim.make_optimizer(cfg).update(grads, state.opt_state, state.params)
    if optim.scheduled(cfg):
        factor = optim.lr_factor(cfg, state.step, context.total_steps)
        updates = jax.tree.map(lambda u: u * factor, updates)
    step_size = state.lr_scale
    if length is not None:
        step_size = step_size * length / goal.maxlen
    updates = jax.tree.map(lambda u: u * step_size, updates)
    params = optax.apply_updates(state.params, updates)
    carry = carry if goal.carried else state.carry
    ema = state.ema
    if cfg.ema:  # the average follows the new parameters
        ema = jax.tree.map(lambda e, p: cfg.ema * e + (1 - cfg.ema) * p, state.ema, params)
    new = TrainState(params, opt_state, state.step + 1, state.lr_scale, carry, ema)
    state = jax.tree.map(lambda n, o: jnp.where(count > 0, n, o), new, state)
    return state, {"loss": total * scale}


def _train_chunk(state, inputs, targets, weights, lengths, context, cfg: Config, mesh: Mesh):
    """Scan `train_step` over a chunk's batches (inputs [K, width, span], targets, weights
    [K, width], each batch split over the mesh; lengths int32[K] with --vary-length, else None)
    -> (state, metrics with one value per step [K])."""
    goal = objective.of(cfg)

    def per_device(state, inputs, targets, weights, lengths, context):
        def body(state, batch):
            inputs, targets, weights, length = batch
            return train_step(state, inputs, targets, weights, cfg, parallel.AXIS, context,
                              length)  # fmt: skip

        if not goal.carried:
            return lax.scan(body, state, (inputs, targets, weights, lengths))
        # Streams are split over the devices like the batch: each device carries its rows.
        rows = weights.shape[-1]
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
        state, metrics = lax.scan(body, state, (inputs, targets, weights, lengths))
        return state._replace(carry=jax.tree.map(whole, state.carry)), metrics

    batch = P(None, parallel.AXIS)
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), batch, batch, batch, P(), P()),
        out_specs=(P(), P()),
    )
    return sharded(state, inputs, targets, weights, lengths, context)


_jitted_chunk = jax.jit(_train_chunk, static_argnames=("cfg", "mesh"), donate_argnums=0)


def train_chunk(state, inputs, targets, weights, lengths, context, cfg: Config, mesh: Mesh):
    """`_train_chunk` under `jax.jit` (the state's buffers are donated), compiled once for the
    run's recipe: the run's length (--epochs, --minutes), which only the schedule's step count
    in `context` carries, is left out of the compile's key, so a run that timed its steps
    before choosing its epoch count (--minutes) trains with the same compiled chunk."""
    return _jitted_chunk(state, inputs, targets, weights, lengths, context,
                         cfg=cfg.replace(epochs=1, minutes=0.0), mesh=mesh)  # fmt: skip
