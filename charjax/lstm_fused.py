"""The LSTM time loop as one fused kernel per direction (Pallas, Triton backend): the recurrent
matmul, the gates and the cell update of every time step in a single launch, each program
owning a block of batch rows for the whole sequence (rows are independent, so no program waits
for another). Same math as `lstm_scan._scan_saving` and `lstm_scan._backward`'s loop; the weight
gradients stay one large XLA matmul after it.

Why: on a GPU each iteration of an XLA loop launches several kernels and costs microseconds of
control, and one training step runs ~120 sequential time steps. On CPU the kernels run in Pallas'
interpret mode (how the tests check them against the XLA loop); training there takes the XLA path.
Inside `shard_map` (the training step) they need `check_vma=False` (`step.train_chunk` sets it):
`pallas_call` does not track which values vary across the mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

ROWS = 16  # batch rows per program: the smallest matrix-unit tile (Triton's dot needs >= 16)
WARPS = 4  # per program (Triton's default)


def supported(batch: int, hidden: int) -> bool:
    """Whether the fused kernels take a loop of this shape: the rows split into whole blocks, a
    power-of-two hidden size of at least 16 (Triton's tile rules) and at most 128 (a gate's
    block of the recurrent kernel, H x H float32, must fit a GPU's shared memory: 256 needs
    256 KB, over an H200's 227 KB); else the XLA loop runs."""
    return batch % ROWS == 0 and 16 <= hidden <= 128 and hidden & (hidden - 1) == 0


def _interpret(interpret: bool | None) -> bool:
    """Pallas' interpret mode: on CPU unless told (a test lowers the GPU kernels on CPU)."""
    return jax.default_backend() == "cpu" if interpret is None else interpret


def _dot(a, b, dtype):
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _gate(ref, t, k, hidden):
    """Quarter k (i, f, g, o) of row block `ref[t]` [ROWS, 4H] -> [ROWS, H] (loaded from the ref:
    Triton cannot slice a loaded value)."""
    return ref[t, :, pl.ds(k * hidden, hidden)]


def _forward_kernel(w_ref, xz_ref, h0_ref, c0_ref, hs_ref, cs_ref, gates_ref, *, dtype, hoist):
    steps, hidden = xz_ref.shape[0], h0_ref.shape[-1]
    weight = lambda k: w_ref[:, pl.ds(k * hidden, hidden)]  # noqa: E731
    if hoist:  # the kernel's gate blocks read once, before the loop (in `dtype` if given)
        held = [weight(k).astype(dtype or jnp.float32) for k in range(4)]
        weight = held.__getitem__

    def step(t, carry):
        h, c = carry
        z = [_gate(xz_ref, t, k, hidden) + _dot(h, weight(k), dtype) for k in range(4)]
        i, f, g, o = (
            jax.nn.sigmoid(z[0]),
            jax.nn.sigmoid(z[1]),
            jnp.tanh(z[2]),
            jax.nn.sigmoid(z[3]),
        )
        c = f * c + i * g
        h = o * jnp.tanh(c)
        hs_ref[t] = h
        cs_ref[t] = c
        for k, gate in enumerate((i, f, g, o)):
            gates_ref[t, :, pl.ds(k * hidden, hidden)] = gate
        return h, c

    lax.fori_loop(0, steps, step, (h0_ref[...], c0_ref[...]))


def _backward_kernel(wt_ref, cs_ref, cprev_ref, gates_ref, dhs_ref, dh_ref, dc_ref, dzs_ref,
                     dh0_ref, dc0_ref, *, dtype, outputs):  # fmt: skip
    steps, hidden = cs_ref.shape[0], cs_ref.shape[-1]

    def step(s, grad):
        t = steps - 1 - s
        dh, dc = grad
        if outputs:
            dh = dh + dhs_ref[t]
        i, f, g, o = (_gate(gates_ref, t, k, hidden) for k in range(4))
        tanh_c = jnp.tanh(cs_ref[t])
        dc = dc + dh * o * (1 - tanh_c**2)
        dz = (
            dc * g * i * (1 - i),
            dc * cprev_ref[t] * f * (1 - f),
            dc * i * (1 - g**2),
            dh * tanh_c * o * (1 - o),
        )
        dh = _dot(dz[0], wt_ref[pl.ds(0, hidden), :], dtype)
        for k in range(4):
            dzs_ref[t, :, pl.ds(k * hidden, hidden)] = dz[k]
            if k:
                dh = dh + _dot(dz[k], wt_ref[pl.ds(k * hidden, hidden), :], dtype)
        return dh, dc * f

    dh, dc = lax.fori_loop(0, steps, step, (dh_ref[...], dc_ref[...]))
    dh0_ref[...] = dh
    dc0_ref[...] = dc


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _specs(steps: int, hidden: int):
    """Block specs: a program's rows of a [T, B, n] sequence, of a [B, H] state, whole weights."""
    seq = lambda n: pl.BlockSpec((steps, ROWS, n), lambda b: (0, b, 0))  # noqa: E731
    state = pl.BlockSpec((ROWS, hidden), lambda b: (b, 0))
    return seq, state


@functools.partial(jax.jit, static_argnames=("dtype", "interpret", "warps", "hoist"))
def scan_saving(recurrent, xz, carry, dtype=None, interpret=None, warps=WARPS, hoist=False):
    """Fused `lstm_scan._scan_saving`: xz float32[T, B, 4H] from carry (h, c) float32[B, H] ->
    (final (h, c), (hs [T, B, H], cs [T, B, H], gates [T, B, 4H])). `warps` and `hoist` (read
    the recurrent kernel once, not every step) are variants the device check times."""
    steps, batch, gates4 = xz.shape
    hidden = gates4 // 4
    seq, state = _specs(steps, hidden)
    hs, cs, gates = pl.pallas_call(
        functools.partial(_forward_kernel, dtype=dtype, hoist=hoist),
        grid=(batch // ROWS,),
        in_specs=[pl.BlockSpec((hidden, gates4), lambda b: (0, 0)), seq(gates4), state, state],
        out_specs=[seq(hidden), seq(hidden), seq(gates4)],
        out_shape=[
            _f32(steps, batch, hidden),
            _f32(steps, batch, hidden),
            _f32(steps, batch, gates4),
        ],
        interpret=_interpret(interpret),
        compiler_params=plt.CompilerParams(num_warps=warps, num_stages=1),  # Triton, not Mosaic
        name="lstm_forward",
    )(recurrent, xz, carry[0], carry[1])
    return (hs[-1], cs[-1]), (hs, cs, gates)


@functools.partial(jax.jit, static_argnames=("dtype", "interpret"))
def backward_loop(recurrent, c_prev, saved, cotangent, dhs=None, dtype=None, interpret=None):
    """Fused loop of `lstm_scan._backward`: -> (d carry0 (dh, dc), dz float32[T, B, 4H])."""
    _, cs, gates = saved
    steps, batch, hidden = cs.shape
    seq, state = _specs(steps, hidden)
    outputs = dhs is not None
    if not outputs:
        dhs = cs[:1]  # unread placeholder (the kernel's signature is fixed)
    dzs, dh0, dc0 = pl.pallas_call(
        functools.partial(_backward_kernel, dtype=dtype, outputs=outputs),
        grid=(batch // ROWS,),
        in_specs=[
            pl.BlockSpec((4 * hidden, hidden), lambda b: (0, 0)),
            seq(hidden),
            seq(hidden),
            seq(4 * hidden),
            seq(hidden) if outputs else pl.BlockSpec((1, ROWS, hidden), lambda b: (0, b, 0)),
            state,
            state,
        ],
        out_specs=[seq(4 * hidden), state, state],
        out_shape=[_f32(steps, batch, 4 * hidden), _f32(batch, hidden), _f32(batch, hidden)],
        interpret=_interpret(interpret),
        compiler_params=plt.CompilerParams(num_warps=WARPS, num_stages=1),
        name="lstm_backward",
    )(recurrent.T, cs, c_prev, gates, dhs, cotangent[0], cotangent[1])
    return (dh0, dc0), dzs
