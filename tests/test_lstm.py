"""The LSTM cell: one step's shapes, its zero state and dimensions."""

import jax.numpy as jnp

from charjax import lstm, lstm_scan


def test_cell_output_shapes():
    h, c = lstm.cell(
        jnp.zeros((4, 16)), lstm_scan.zero_carry(jnp.zeros((3, 2, 16))), jnp.zeros((2, 16))
    )
    assert h.shape == c.shape == (2, 4)


def test_zero_state_and_dims():
    h, c = lstm.zero_state(3, 8)
    assert h.shape == c.shape == (3, 8) and h.dtype == jnp.float32 and not h.any()
    params = {"kernel": jnp.zeros((11, 32)), "recurrent_kernel": jnp.zeros((8, 32))}
    assert lstm.dims(params) == (11, 8)
