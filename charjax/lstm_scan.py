"""The LSTM cell scanned over time: a plain masked scan (the autodiff reference; sampling and
scoring) and the training scans, whose gradients are hand-written (`custom_vjp`): the backward
loop emits per-step gate gradients and the weight gradients are one matmul after it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from charjax import lstm_fused
from charjax.draws import NONE, Draws
from charjax.lstm import cell, cell_with_gates, input_projection, matmul, row_sums


class Loop(NamedTuple):
    """How the time loops run (speed only: the same math). `unroll`: time steps per loop
    iteration (a GPU loop iteration costs microseconds of control); `fused`: the training scans
    as one Pallas kernel per direction (`lstm_fused`), where the shape allows; `autodiff`: the
    LSTM trained through autodiff of the plain scan instead of the hand-written backward (what
    the other cells do; for comparison)."""

    unroll: int = 1
    fused: bool = False
    autodiff: bool = False


PLAIN = Loop()  # one time step per iteration, XLA scans


def _fused(loop: Loop, xz: jax.Array, hmask=None, length=None) -> bool:
    """Whether the fused kernels take this loop (they have no recurrent dropout mask and end
    at the last step)."""
    plain = hmask is None and length is None
    return loop.fused and plain and lstm_fused.supported(xz.shape[1], xz.shape[-1] // 4)


def zero_carry(xz: jax.Array) -> tuple:
    """Zero (h, c) float32[B, H] for projected inputs xz [T, B, 4H].

    Derived from xz (not built from shapes) so that inside `shard_map` it has the same
    per-device type as the carries the scan computes from the data.
    """
    zeros = jnp.zeros_like(xz[0, :, : xz.shape[-1] // 4])
    return zeros, zeros


def run(
    params: dict,
    ids: jax.Array,
    carry=None,
    valid: jax.Array | None = None,
    dtype=None,
    loop=PLAIN,
):
    """Scan the cell over ids int32[B, T] -> (final (h, c), hs float32[B, T, H]).

    `valid` bool[T] (optional) marks steps that count; at the others the carry passes through
    unchanged, so left-padding a short window gives exactly the short window's result. A plain
    scan, differentiated by autodiff: the reference the fast gradients are tested against.
    """
    if valid is None:
        valid = jnp.ones(ids.shape[1:], bool)
    carry, hs = layer(params, input_projection(params, ids.T), carry, valid, dtype, loop)
    return carry, jnp.swapaxes(hs, 0, 1)


def layer(params: dict, xz: jax.Array, carry=None, valid=None, dtype=None, loop=PLAIN,
          draws: Draws = NONE):  # fmt: skip
    """One LSTM layer over projected inputs xz float32[T, B, 4H] -> (final carry, hs [T, B, H]).

    Without `valid` it takes the fast-gradient `recurrence` with the layer's `draws` (its
    recurrent dropout mask, and the window length: the step whose state is the final carry);
    with it, a masked plain scan (used for sampling and scoring, where no gradient is needed
    and nothing is drawn). `loop`: see `Loop`.
    """
    if carry is None:
        carry = zero_carry(xz)
    if valid is None:
        hmask = draws.h_mask(xz.shape[1], xz.shape[-1] // 4)
        return recurrence(params["recurrent_kernel"], xz, carry, dtype, loop, hmask, draws.length)

    def step(carry, inputs):
        xz_t, valid_t = inputs
        new = cell(params["recurrent_kernel"], carry, xz_t, dtype)
        new = jax.tree.map(lambda n, o: jnp.where(valid_t, n, o), new, carry)
        return new, new[0]

    return lax.scan(step, carry, (xz, valid), unroll=loop.unroll)


def _scan_saving(
    recurrent: jax.Array, xz: jax.Array, carry: tuple, dtype=None, loop=PLAIN, hmask=None,
    length=None,
):  # fmt: skip
    """Scan from `carry` over xz [T, B, 4H], keeping what the backward pass needs:
    (final carry, (hs, cs [T, B, H], gates [T, B, 4H])). With `length` (an int32 scalar in
    [1, T]) the final carry is the state after step `length` (hs, cs at length - 1)."""
    if _fused(loop, xz, hmask, length):
        return lstm_fused.scan_saving(recurrent, xz, carry, dtype)

    def step(carry, xz_t):
        carry, gates = cell_with_gates(recurrent, carry, xz_t, dtype, hmask)
        return carry, (*carry, gates)

    carry, (hs, cs, gates) = lax.scan(step, carry, xz, unroll=loop.unroll)
    if length is not None:
        carry = tuple(lax.dynamic_index_in_dim(x, length - 1, keepdims=False) for x in (hs, cs))
    return carry, (hs, cs, gates)


def _backward(
    recurrent, carry0, saved, cotangent, dhs=None, dtype=None, loop=PLAIN, hmask=None,
    length=None,
):  # fmt: skip
    """Backward through time -> (d carry0, dz float32[T, B, 4H], d recurrent kernel).

    The loop carries only (dh, dc) (plus each step's output gradient `dhs[t]` when the outputs
    were used) and emits the pre-activation gate gradients dz; the recurrent-kernel gradient is
    then one matmul over all T*B rows instead of T small accumulations inside the loop. With
    `hmask`, h_{t-1} entered the recurrent matmul masked: so do its gradient and the kernel's.
    With `length`, the final carry was the state at step length - 1: its gradient enters there.
    """
    hs, cs, gates = saved
    h_prev = jnp.concatenate([carry0[0][None], hs[:-1]])  # h_{t-1}, [T, B, H]
    c_prev = jnp.concatenate([carry0[1][None], cs[:-1]])
    if hmask is not None:
        h_prev = h_prev * hmask
    if _fused(loop, gates, hmask, length):
        d_carry0, dzs = lstm_fused.backward_loop(recurrent, c_prev, saved, cotangent, dhs, dtype)
        return d_carry0, dzs, _recurrent_grad(h_prev, dzs, dtype)
    dcs = None
    if length is not None:  # the final carry's gradient, placed at its step
        at = (jnp.arange(hs.shape[0]) == length - 1)[:, None, None]
        dhs = jnp.where(at, cotangent[0], 0.0) + (0.0 if dhs is None else dhs)
        dcs = jnp.where(at, cotangent[1], 0.0)
        cotangent = (jnp.zeros_like(cotangent[0]), jnp.zeros_like(cotangent[1]))

    def step(grad, saved_t):
        dh, dc = grad
        c, c_before, gate = saved_t[:3]
        if dhs is not None:
            dh = dh + saved_t[3]
        if dcs is not None:
            dc = dc + saved_t[4]
        i, f, g, o = jnp.split(gate, 4, axis=-1)
        tanh_c = jnp.tanh(c)
        dc = dc + dh * o * (1 - tanh_c**2)
        dz = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * c_before * f * (1 - f),
                dc * i * (1 - g**2),
                dh * tanh_c * o * (1 - o),
            ],
            axis=-1,
        )
        dh_prev = matmul(dz, recurrent.T, dtype)
        return (dh_prev if hmask is None else dh_prev * hmask, dc * f), dz

    xs = (cs, c_prev, gates) if dhs is None else (cs, c_prev, gates, dhs)
    if dcs is not None:
        xs = (*xs, dcs)
    d_carry0, dzs = lax.scan(step, tuple(cotangent), xs, reverse=True, unroll=loop.unroll)
    return d_carry0, dzs, _recurrent_grad(h_prev, dzs, dtype)


def _recurrent_grad(h_prev: jax.Array, dzs: jax.Array, dtype) -> jax.Array:
    """d recurrent kernel [H, 4H]: one matmul over all T*B rows of h_{t-1} and dz."""
    return matmul(h_prev.reshape(-1, h_prev.shape[-1]).T, dzs.reshape(-1, dzs.shape[-1]), dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def recurrence(
    recurrent: jax.Array, xz: jax.Array, carry: tuple, dtype=None, loop=PLAIN, hmask=None,
    length=None,
):  # fmt: skip
    """(final (h, c), hs float32[T, B, H]) of a scan over xz [T, B, 4H] from `carry`.

    Same numbers as the plain scan; its gradient is the hand-written `_backward`, which also
    gives d xz (the input projection's gradient is left to autodiff: a matmul for stacked
    layers, a scatter-add for ids) and d carry (for a carry that comes from earlier chunks).
    `hmask` float32[B, H]: recurrent dropout (see `lstm.cell_with_gates`), a constant.
    `length` int32 scalar in [1, T]: the final carry is the state after that many steps (a
    window shorter than the T steps computed; the steps after it change nothing before it).
    """
    carry, (hs, _, _) = _scan_saving(recurrent, xz, carry, dtype, loop, hmask, length)
    return carry, hs


def _recurrence_fwd(recurrent, xz, carry, dtype, loop, hmask, length):
    final_state, saved = _scan_saving(recurrent, xz, carry, dtype, loop, hmask, length)
    return (final_state, saved[0]), (recurrent, carry, saved, hmask, length)


def _recurrence_bwd(dtype, loop, res, cotangent):
    recurrent, carry0, saved, hmask, length = res
    d_final, dhs = cotangent
    d_carry0, dzs, d_recurrent = _backward(
        recurrent, carry0, saved, d_final, dhs, dtype, loop, hmask, length
    )
    d_hmask = None if hmask is None else jnp.zeros_like(hmask)
    return d_recurrent, dzs, d_carry0, d_hmask, None


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def final_carry(params: dict, ids: jax.Array, dtype=None, loop=PLAIN) -> tuple:
    """(h, c) after scanning ids int32[B, T] from a zero state: `run(...)[0]`, same numbers.

    The fastest path for the original model (one layer, loss after the last step). Its gradient
    is hand-written (as cuDNN does it): `_backward` gives the gate gradients of every step;
    the weight gradients are then one large matmul over all T*B rows (recurrent kernel) and a
    per-id row sum (input kernel, `lstm.row_sums`).
    """
    xz = input_projection(params, ids.T)  # [T, B, 4H], gathered time-major
    return _scan_saving(params["recurrent_kernel"], xz, zero_carry(xz), dtype, loop)[0]


def _final_carry_fwd(params, ids, dtype, loop):
    xz = input_projection(params, ids.T)
    carry0 = zero_carry(xz)
    carry, saved = _scan_saving(params["recurrent_kernel"], xz, carry0, dtype, loop)
    return carry, (params, ids, carry0, saved)


def _final_carry_bwd(dtype, loop, res, cotangent):
    params, ids, carry0, saved = res
    _, dzs, d_recurrent = _backward(
        params["recurrent_kernel"], carry0, saved, cotangent, dtype=dtype, loop=loop
    )
    dz_rows = dzs.reshape(-1, dzs.shape[-1])  # [T*B, 4H]
    grads = {
        "kernel": row_sums(dz_rows, ids.T.reshape(-1), params["kernel"].shape[0]),
        "recurrent_kernel": d_recurrent,
        "bias": dz_rows.sum(axis=0),
    }
    return grads, None


final_carry.defvjp(_final_carry_fwd, _final_carry_bwd)
