"""A layer of a registered cell (`charjax.cells`) over time: `plain`, a masked scan of the
cell's step (inference, and training through autodiff), and `fast`, the training scan of every
LSTM-shaped cell, whose gradient is written out (`custom_vjp`): the forward keeps each step's
pullback of the cell's own `update` (`jax.vjp`; for a `remat` cell only its inputs), the backward
loop carries only (dh, dc) and emits each step's gradients through it (no second copy of any
cell's math); the recurrent-kernel gradient is then one matmul over all T*B rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from charjax import cells, lstm
from charjax.cells import Cell

KERNELS = ("kernel", "recurrent_kernel")  # the rest of a layer's parameters `update` may read


def plain(cell: Cell, params: dict, x: jax.Array, carry=None, valid=None, dtype=None,
          unroll: int = 1, hmask=None, length=None):  # fmt: skip
    """A layer of `cell` over x (int32[T, B] ids or float32[T, B, F]) -> (final (h, c), hs
    float32[T, B, H]). `valid` bool[T]: at the other steps the carry passes through unchanged
    (a left-padded window reads as the short one); `hmask` float32[B, H]: recurrent dropout;
    `length` int32 scalar in [1, T]: the final carry is the state after that many steps."""
    inputs = cell.inputs(params, x, dtype)
    carry = _start(carry, inputs, params)

    def step(carry, inputs_valid):
        inputs_t, valid_t = inputs_valid
        new = cell.step(params, carry, inputs_t, dtype, hmask)
        if valid is not None:
            new = jax.tree.map(lambda n, o: jnp.where(valid_t, n, o), new, carry)
        return new, new if length is not None else new[0]

    flags = jnp.ones(x.shape[:1], bool) if valid is None else valid
    carry, emitted = lax.scan(step, carry, (inputs, flags), unroll=unroll)
    if length is None:
        return carry, emitted
    return _at(emitted, length), emitted[0]


def fast(cell: Cell, params: dict, x: jax.Array, carry=None, dtype=None, unroll: int = 1,
         hmask=None, length=None, outputs: bool = True):  # fmt: skip
    """`plain`'s numbers (no `valid`) for an LSTM-shaped cell, with the written-out gradient:
    the time-parallel inputs before the loop (differentiated by autodiff: a row gather's
    scatter-add for ids, a matmul for features), then `recurrence`. `outputs=False`: hs is
    None (one layer read at its last step: nothing per step to keep for it)."""
    inputs = cell.inputs(params, x, dtype)
    rest = {k: v for k, v in params.items() if k not in KERNELS}
    carry = _start(carry, inputs, params)
    length = jnp.int32(x.shape[0]) if length is None else length
    update = _rematted(cell.update) if cell.remat else cell.update
    return recurrence(update, dtype, unroll, (outputs, cell.summed), params["recurrent_kernel"],
                      rest, inputs, carry, hmask, length)  # fmt: skip


# `update` recomputed in the backward (its pullback keeps only its inputs): one function per cell
_rematted = functools.cache(jax.checkpoint)


def _start(carry, inputs, params):
    """The given carry, else the cell's zero state for this batch."""
    if carry is not None:
        return carry
    return cells.zero_state(jax.tree.leaves(inputs)[0][0], params["recurrent_kernel"].shape[0])


def _at(emitted: tuple, length) -> tuple:
    """(h, c) at step length - 1 of emitted (hs, cs) [T, B, H]."""
    return tuple(lax.dynamic_index_in_dim(x, length - 1, keepdims=False) for x in emitted)


def _forward(update, dtype, unroll, kernel, rest, inputs, carry, hmask, length, saving=False):
    """-> (final carry, hs float32[T, B, H], what the backward needs or None). `saving`: each
    step's pullback of `update` (`jax.vjp`: its residuals, e.g. the gates after their
    activations, stacked over the steps), so the backward loop recomputes nothing."""

    def step(carry, inputs_t):
        h, c = carry
        r = cells.recurrent(kernel, h, dtype, hmask)
        if not saving:
            new = update(rest, inputs_t, r, c)
            return new, new
        new, pullback = jax.vjp(update, rest, inputs_t, r, c)
        return new, (new, pullback)

    _, emitted = lax.scan(step, carry, inputs, unroll=unroll)
    (hs, cs), pullbacks = emitted if saving else (emitted, None)
    return _at((hs, cs), length), hs, pullbacks


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def recurrence(update, dtype, unroll, how, kernel, rest, inputs, carry, hmask, length):
    """(final (h, c), hs float32[T, B, H] or None) of `update`'s cell over per-step `inputs`
    (time-major) from `carry`, the final carry taken after `length` steps (int32 scalar in
    [1, T]; the steps after it are padding). `kernel`: the recurrent kernel [H, 4H]; `rest`:
    the layer's other parameters (`update` reads its own); `hmask` float32[B, H] or None:
    recurrent dropout, a constant; `how`: (outputs: hs returned, summed: `Cell.summed`). Its
    gradient is `_recurrence_bwd`."""
    final, hs, _ = _forward(update, dtype, unroll, kernel, rest, inputs, carry, hmask, length)
    return final, hs if how[0] else None


def _recurrence_fwd(update, dtype, unroll, how, kernel, rest, inputs, carry, hmask, length):
    outputs = how[0]
    final, hs, pullbacks = _forward(update, dtype, unroll, kernel, rest, inputs, carry, hmask,
                                    length, saving=True)  # fmt: skip
    residuals = (kernel, rest, carry, hmask, length, hs, pullbacks)
    return (final, hs if outputs else None), residuals


def _recurrence_bwd(update, dtype, unroll, how, residuals, cotangent):
    """Backward through time. The loop carries (dh, dc) and the sum of `rest`'s gradient and
    emits each step's d inputs and d r (its saved pullback of `update`); after it, the
    recurrent kernel's gradient is one matmul of h_{t-1} (masked as it entered) and d r."""
    kernel, rest, carry0, hmask, length, hs, pullbacks = residuals
    (outputs, summed), (d_final, dhs) = how, cotangent
    at_end = (jnp.arange(hs.shape[0]) == length - 1)[:, None, None]  # the final carry's step

    def step(grad, saved_t):
        dh, dc, d_rest = grad
        pullback, dh_out, at = saved_t
        dh = dh + jnp.where(at, d_final[0], 0.0) + (0.0 if dh_out is None else dh_out)
        dc = dc + jnp.where(at, d_final[1], 0.0)
        d_rest_t, d_inputs_t, dr_t, dc_prev = pullback((dh, dc))
        dh_prev = lstm.matmul(dr_t, kernel.T, dtype)
        if hmask is not None:
            dh_prev = dh_prev * hmask
        d_rest = jax.tree.map(jnp.add, d_rest, d_rest_t)
        return (dh_prev, dc_prev, d_rest), (None if summed else d_inputs_t, dr_t)

    zeros = jnp.zeros_like(carry0[0])
    start = (zeros, jnp.zeros_like(carry0[1]), jax.tree.map(jnp.zeros_like, rest))
    xs = (pullbacks, dhs if outputs else None, at_end)
    (dh0, dc0, d_rest), (d_inputs, drs) = lax.scan(step, start, xs, reverse=True, unroll=unroll)
    d_inputs = drs if summed else d_inputs  # z = inputs + r: one gradient
    h_prev = jnp.concatenate([carry0[0][None], hs[:-1]])  # h_{t-1}, [T, B, H]
    masked = h_prev if hmask is None else h_prev * hmask
    rows = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731  [T*B, .]
    d_kernel = lstm.matmul(rows(masked).T, rows(drs), dtype)
    d_hmask = None if hmask is None else jnp.zeros_like(hmask)
    return d_kernel, d_rest, d_inputs, (dh0, dc0), d_hmask, None


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
