"""The LSTM cell, once: Keras-layout parameters and initialisers, one step, its zero state
(`lstm_scan` runs it over time, with its hand-written backward).

Layout and gate order follow Keras 3's `LSTM`: a fused input kernel float32[V, 4H], a recurrent
kernel float32[H, 4H] and a bias float32[4H], gates in the order i, f, c (candidate), o.
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


def input_projection(params: dict, ids: jax.Array) -> jax.Array:
    """x_t @ kernel + bias for one-hot x_t, as a row gather: float32[..., 4H] from int ids.

    Gathering a row equals multiplying by a one-hot vector exactly, without the one-hot tensor
    (and ~25 % faster on CPU than the matmul).
    """
    return params["kernel"][ids] + params["bias"]


def matmul(a: jax.Array, b: jax.Array, dtype=None) -> jax.Array:
    """a @ b; with `dtype` (e.g. bfloat16) the operands are cast to it and the products summed
    in float32, the usual mixed precision of GPU/TPU matrix units. None keeps float32."""
    if dtype is None:
        return a @ b
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def cell_with_gates(recurrent_kernel: jax.Array, carry: tuple, xz: jax.Array, dtype=None):
    """One step: (h, c) and the projected input xz float32[B, 4H] -> ((h, c), gates [B, 4H]).

    The gates (i, f, g, o after their activations) are what the hand-written backward needs.
    """
    h, c = carry
    z = xz + matmul(h, recurrent_kernel, dtype)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), jnp.concatenate([i, f, g, o], axis=-1)


def cell(recurrent_kernel: jax.Array, carry: tuple, xz: jax.Array, dtype=None) -> tuple:
    """One step -> new (h, c), each float32[B, H]."""
    return cell_with_gates(recurrent_kernel, carry, xz, dtype)[0]


def zero_state(batch: int, hidden: int) -> tuple:
    """The state a sequence starts from: zero (h, c), each float32[batch, hidden]."""
    zero = jnp.zeros((batch, hidden), jnp.float32)
    return zero, zero


def dims(params: dict) -> tuple[int, int]:
    """(input features, hidden units) of one layer's parameters."""
    features, gates = params["kernel"].shape
    return features, gates // 4
