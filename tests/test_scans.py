"""A layer over time (`charjax.scans`): the fast training scan of each LSTM-shaped cell against
autodiff of the plain scan of the same cell, for every input it differentiates (parameters,
inputs, the initial carry), with recurrent dropout, a shorter window length and without the
per-step outputs; the plain scan's masks and zero state.

Tolerances: both sides compute the same float32 operations, the backward in another order
(one matmul over all T*B rows against T small accumulations), so values agree to a few float32
ulps of the largest term summed: rtol 1e-5, and atol 1e-6 times the leaf's largest value (a
sum of terms of ~10 that cancels to ~1e-2 keeps the rounding of the terms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from util import init_params

from charjax import cells, lstm, scans

T, B, F, H = 7, 3, 5, 4
RTOL, ATOL = 1e-5, 1e-6


def close(a, b, **kw):
    """a equals b to float32 rounding of b's largest value (see the module docstring)."""
    scale = max(1.0, float(np.abs(np.asarray(b)).max()))
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL * scale, **kw)


SHAPED = [name for name, cell in cells.CELLS.items() if cell.update is not None]


def _layer(name, seed=0):
    """One stacked layer of `name` (features in, not ids), every value moved off its initial
    one (a misplaced gain or shift changes the numbers)."""
    shapes = cells.CELLS[name].shapes(F, H, False, cells.PLAIN)
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(0.5 * rng.standard_normal(shape, np.float32)) + (k == "cell_gain")
            for k, (_, shape) in shapes.items()}  # fmt: skip


def _data(seed=1):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((T, B, F), np.float32))
    carry = tuple(jnp.asarray(0.5 * rng.standard_normal((2, B, H), np.float32)))
    hmask = jnp.asarray((rng.random((B, H)) < 0.6) / 0.6, jnp.float32)
    return x, carry, hmask


def test_the_lstm_shaped_cells_are_registered_with_their_update():
    assert SHAPED == ["lstm", "lnlstm"] and cells.CELLS["mogrifier"].update is None
    assert [cells.CELLS[n].title for n in cells.CELLS] == ["LSTM", "LN-LSTM", "Mogrifier LSTM"]


@pytest.mark.parametrize("name", SHAPED)
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "recurrent-dropout"])
def test_fast_gradient_equals_autodiff_of_the_plain_scan(name, masked):
    """Values and gradients (parameters, inputs, initial carry) of the fast scan against
    jax.grad of the plain scan, for windows ending at each of three lengths."""
    cell, params = cells.CELLS[name], _layer(name)
    x, carry, hmask = _data()
    hmask = hmask if masked else None
    weights = jnp.arange(1.0, T + 1)[:, None, None]

    def loss(params, x, carry, length, fast):
        scan = scans.fast if fast else scans.plain
        final, hs = scan(cell, params, x, carry, hmask=hmask, length=length)
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(final[1] ** 2) + jnp.sum(jnp.cos(final[0]))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=4)
    for length in (1, 4, T):
        value, fast = grad(params, x, carry, jnp.int32(length), True)
        want_value, plain = grad(params, x, carry, jnp.int32(length), False)
        close(value, want_value)
        for path, a in jax.tree_util.tree_leaves_with_path(fast):
            b = plain
            for key in path:
                b = b[key.key if hasattr(key, "key") else key.idx]
            close(a, b, err_msg=f"{length} {path}")
            assert np.abs(np.asarray(a)).max() > 1e-3, path  # every input gets a gradient


@pytest.mark.parametrize("name", SHAPED)
def test_without_outputs_the_final_carry_and_its_gradient_are_the_same(name):
    """One layer read at its last step (the original model): no per-step outputs kept."""
    cell, params = cells.CELLS[name], _layer(name, seed=3)
    x, carry, _ = _data(seed=4)

    def loss(params, outputs):
        (h, c), hs = scans.fast(cell, params, x, carry, outputs=outputs)
        assert (hs is None) == (not outputs)
        return jnp.sum(jnp.sin(h)) + jnp.sum(c**2)

    a = jax.jit(jax.grad(loss), static_argnums=1)(params, False)
    b = jax.jit(jax.grad(loss), static_argnums=1)(params, True)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        close(u, v)


def test_a_valid_mask_passes_the_carry_through_and_the_zero_state_is_the_cells():
    """Left-padding a window (valid False there) gives exactly the short window's numbers; no
    carry starts from `cells.zero_state`: zeros of the batch's rows."""
    cell, params = cells.LSTM, _layer("lstm", seed=5)
    x, carry, _ = _data(seed=6)
    run = jax.jit(lambda x, v: scans.plain(cell, params, x, carry, v))
    short, padded = run(x[2:], jnp.ones(T - 2, bool)), run(x, jnp.arange(T) >= 2)
    np.testing.assert_array_equal(short[0], padded[0])
    np.testing.assert_array_equal(short[1], padded[1][2:])
    h, c = cells.zero_state(x[0], H)
    assert h.shape == c.shape == (B, H) and h.dtype == jnp.float32 and not h.any()
    zero = scans.plain(cell, params, x[:1], (h, c))[0]
    np.testing.assert_array_equal(zero[0], scans.plain(cell, params, x[:1])[0][0])
    assert cells.dims(params) == (F, H)


def test_the_id_layer_of_the_original_model_equals_its_equations():
    """The first layer reads ids as gathered kernel rows (one-hot @ kernel), its row-gather
    gradient a per-id row sum (scatter-add on CPU, one-hot matmul elsewhere: equal)."""
    params = init_params(jax.random.key(2), 7, 5)["lstm"]
    rng = np.random.default_rng(0)
    values, ids = rng.standard_normal((12, 3), np.float32), rng.integers(0, 7, 12)
    np.testing.assert_allclose(
        lstm.row_sums(values, ids, 7, scatter=True), lstm.row_sums(values, ids, 7, scatter=False),
        rtol=RTOL, atol=ATOL,
    )  # fmt: skip
    xz = cells.LSTM.inputs(params, jnp.array([[1], [4]]), None)
    one_hot = np.eye(7, dtype=np.float32)[[1, 4]]
    np.testing.assert_allclose(xz[:, 0], one_hot @ params["kernel"] + params["bias"], atol=ATOL)
