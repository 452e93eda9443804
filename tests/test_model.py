import jax
import jax.numpy as jnp
import numpy as np

from charjax import lstm, model


def test_parameter_shapes_and_count():
    params = model.init_params(jax.random.key(0), 59, 128)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert shapes == {
        "lstm": {
            "kernel": ((59, 512), jnp.float32),
            "recurrent_kernel": ((128, 512), jnp.float32),
            "bias": ((512,), jnp.float32),
        },
        "dense": {"kernel": ((128, 59), jnp.float32), "bias": ((59,), jnp.float32)},
    }
    assert model.num_params(params) == 4 * 128 * (59 + 128 + 1) + 128 * 59 + 59 == 103_867
    assert model.shape_of(params) == (59, 128)


def test_keras_initialisers():
    params = model.init_params(jax.random.key(1), 59, 128)
    bias = np.asarray(params["lstm"]["bias"])
    assert (bias[128:256] == 1).all() and (np.delete(bias, np.s_[128:256]) == 0).all()
    r = np.asarray(params["lstm"]["recurrent_kernel"])
    np.testing.assert_allclose(r @ r.T, np.eye(128), atol=1e-5)  # orthogonal rows
    for kernel, fan in (
        (params["lstm"]["kernel"], 59 + 512),
        (params["dense"]["kernel"], 128 + 59),
    ):
        limit = np.sqrt(6 / fan)  # glorot-uniform
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert (np.asarray(params["dense"]["bias"]) == 0).all()


def test_forward_shapes_and_jit():
    params = model.init_params(jax.random.key(0), 11, 8)
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
    ((h, c),), logits = model.forward(params, ids)
    assert h.shape == c.shape == (3, 8) and logits.shape == (3, 11) and logits.dtype == jnp.float32
    ((_, _),), jitted = jax.jit(model.forward)(params, ids)
    np.testing.assert_allclose(jitted, logits, rtol=1e-6, atol=1e-6)


def test_forward_matches_a_hand_written_cell_loop():
    params = model.init_params(jax.random.key(2), 7, 5)
    ids = np.array([[1, 4, 6, 0]])
    p = jax.tree.map(np.asarray, params)
    h = np.zeros((1, 5), np.float32)
    c = np.zeros((1, 5), np.float32)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    for t in range(ids.shape[1]):
        x = np.eye(7, dtype=np.float32)[ids[:, t]]
        z = x @ p["lstm"]["kernel"] + h @ p["lstm"]["recurrent_kernel"] + p["lstm"]["bias"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
    _, logits = model.forward(params, jnp.asarray(ids))
    np.testing.assert_allclose(logits, h @ p["dense"]["kernel"] + p["dense"]["bias"], atol=1e-5)


def test_left_padding_with_valid_mask_equals_the_short_window():
    params = model.init_params(jax.random.key(3), 9, 6)
    short = jnp.array([[3, 1, 4]])
    padded = jnp.array([[0, 0, 3, 1, 4]])
    valid = jnp.array([False, False, True, True, True])
    ((h1, c1),), l1 = model.forward(params, short, valid=jnp.ones(3, bool))
    ((h2, c2),), l2 = model.forward(params, padded, valid=valid)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(l1, l2)


def test_carry_continues_a_sequence():
    params = model.init_params(jax.random.key(4), 9, 6)
    ids = jnp.array([[1, 2, 3, 4, 5, 6]])
    _, whole = model.forward(params, ids)
    carry, _ = model.forward(params, ids[:, :4])
    _, rest = model.forward(params, ids[:, 4:], carry)
    np.testing.assert_allclose(whole, rest, atol=1e-6)


def test_cell_output_shapes():
    h, c = lstm.cell(jnp.zeros((4, 16)), lstm.zero_carry(jnp.zeros((3, 2, 16))), jnp.zeros((2, 16)))
    assert h.shape == c.shape == (2, 4)


def test_fast_gradient_equals_autodiff_of_the_plain_scan():
    params = model.init_params(jax.random.key(5), 11, 16)["lstm"]
    ids = jax.random.randint(jax.random.key(6), (4, 9), 0, 11)
    probe_h, probe_c = jax.random.normal(jax.random.key(7), (2, 4, 16))

    def objective(final):
        def f(p):
            h, c = final(p, ids)
            return jnp.sum(jnp.sin(h) * probe_h) + jnp.sum(c * probe_c)

        return f

    plain = lambda p, ids: lstm.run(p, ids)[0]  # noqa: E731
    np.testing.assert_allclose(lstm.final_carry(params, ids)[0], plain(params, ids)[0], atol=1e-6)
    fast_grads = jax.jit(jax.grad(objective(lstm.final_carry)))(params)
    auto_grads = jax.jit(jax.grad(objective(plain)))(params)
    for name in ("kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(fast_grads[name], auto_grads[name], rtol=1e-5, atol=1e-6)
        assert np.abs(np.asarray(fast_grads[name])).max() > 1e-3
