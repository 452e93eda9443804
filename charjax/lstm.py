"""What every cell's layer shares with Keras 3's `LSTM`: its initialisers, the input projection
of char ids as a row gather (and that gather's deterministic gradient), and the matmul in the
run's dtype. Layout and gate order: a fused input kernel float32[V, 4H], a recurrent kernel
float32[H, 4H] and a bias float32[4H], gates in the order i, f, c (candidate), o.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keras initialisers: glorot-uniform input kernel, orthogonal recurrent kernel.
kernel_init = jax.nn.initializers.glorot_uniform()
recurrent_init = jax.nn.initializers.orthogonal()


def bias_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Zeros with the forget-gate quarter at 1 (Keras `unit_forget_bias=True`).

    Starting the forget gate open (sigmoid(1) ~ 0.73) lets gradients flow through the cell
    state early in training (Jozefowicz et al., 2015).
    """
    del key
    hidden = shape[-1] // 4
    return jnp.zeros(shape, dtype).at[..., hidden : 2 * hidden].set(1.0)


@jax.custom_vjp
def rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """table[ids]: rows float32[..., F] of table [N, F] for int ids [...]."""
    return table[ids]


def _rows_fwd(table, ids):
    return table[ids], (table, ids)


def _rows_bwd(res, cotangent):
    table, ids = res
    flat = cotangent.reshape(-1, cotangent.shape[-1])
    return row_sums(flat, ids.reshape(-1), table.shape[0]), None


rows.defvjp(_rows_fwd, _rows_bwd)


def row_sums(values: jax.Array, ids: jax.Array, n: int, scatter: bool | None = None):
    """Sum of the rows of values [R, F] by id (ids int[R] in [0, n)) -> [n, F]: the gradient of
    a row gather. A scatter-add on CPU (sequential there, so deterministic); elsewhere a one-hot
    matmul at full float32 precision, since a GPU's scatter-add adds in whatever order its
    atomics land and would break bit-identical runs. `scatter` forces one way (tests)."""
    if scatter is None:
        scatter = jax.default_backend() == "cpu"
    if scatter:
        return jax.ops.segment_sum(values, ids, num_segments=n)
    one_hot = jax.nn.one_hot(ids, n, dtype=values.dtype)
    return jnp.dot(one_hot.T, values, precision=jax.lax.Precision.HIGHEST)


def matmul(a: jax.Array, b: jax.Array, dtype=None) -> jax.Array:
    """a @ b; with `dtype` (e.g. bfloat16) the operands are cast to it and the products summed
    in float32, the usual mixed precision of GPU/TPU matrix units. None keeps float32."""
    if dtype is None:
        return a @ b
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
