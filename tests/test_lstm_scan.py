"""The LSTM over time: the hand-written backward against autodiff of the plain scan (one layer,
stacked layers with outputs at every step, a given initial carry)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax import lstm, lstm_scan, model


def test_fast_gradient_equals_autodiff_of_the_plain_scan():
    params = model.init_params(jax.random.key(5), 11, 16)["lstm"]
    ids = jax.random.randint(jax.random.key(6), (4, 9), 0, 11)
    probe_h, probe_c = jax.random.normal(jax.random.key(7), (2, 4, 16))

    def objective(final):
        def f(p):
            h, c = final(p, ids)
            return jnp.sum(jnp.sin(h) * probe_h) + jnp.sum(c * probe_c)

        return f

    plain = lambda p, ids: lstm_scan.run(p, ids)[0]  # noqa: E731
    np.testing.assert_allclose(
        lstm_scan.final_carry(params, ids)[0], plain(params, ids)[0], atol=1e-6
    )
    fast_grads = jax.jit(jax.grad(objective(lstm_scan.final_carry)))(params)
    auto_grads = jax.jit(jax.grad(objective(plain)))(params)
    for name in ("kernel", "recurrent_kernel", "bias"):
        np.testing.assert_allclose(fast_grads[name], auto_grads[name], rtol=1e-5, atol=1e-6)
        assert np.abs(np.asarray(fast_grads[name])).max() > 1e-3


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return model.init_params(jax.random.key(seed), vocab, hidden, layers)


def test_fast_gradients_of_stacked_layers_and_all_steps_equal_autodiff():
    """The hand-written backward (outputs at every step, stacked layers, a given initial carry)
    against autodiff of the plain masked scan."""
    params = _params(vocab=11, hidden=16, layers=2, seed=5)
    ids = jax.random.randint(jax.random.key(6), (4, 9), 0, 11)
    probe = jax.random.normal(jax.random.key(7), (4, 9, 11))
    carry = tuple(
        tuple(jax.random.normal(jax.random.key(8 + i), (2, 4, 16)) * 0.5) for i in range(2)
    )

    def objective(p, valid):
        _, logits = model.forward(p, ids, carry, valid, all_steps=True)
        return jnp.sum(jnp.sin(logits) * probe)

    fast = jax.jit(jax.grad(objective))(params, None)
    plain = jax.jit(jax.grad(objective))(params, jnp.ones(9, bool))
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert np.abs(np.asarray(a)).max() > 1e-3


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_lstm_recurrence_carry_gradient():
    """d(initial carry) of the fast recurrence equals autodiff's (used when carries chain)."""
    recurrent = jax.random.normal(jax.random.key(0), (4, 16)) * 0.3
    xz = jax.random.normal(jax.random.key(1), (5, 3, 16))
    carry = tuple(jax.random.normal(jax.random.key(2), (2, 3, 4)))

    def loss(carry, fast):
        if fast:
            final, hs = lstm_scan.recurrence(recurrent, xz, carry)
        else:
            final, hs = lstm_scan.layer(
                {"recurrent_kernel": recurrent}, xz, carry, jnp.ones(5, bool)
            )
        return jnp.sum(hs**2) + jnp.sum(final[1])

    fast = jax.grad(loss)(carry, True)
    plain = jax.grad(loss)(carry, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_unrolled_loops_give_the_same_numbers():
    """`--unroll` (GPU-shaped loops) changes speed, not math: values and gradients of every
    path (the original model's, stacked layers with all steps, the masked scan) agree."""
    params = _params(vocab=11, hidden=16, layers=2, seed=9)
    ids = jax.random.randint(jax.random.key(10), (4, 9), 0, 11)

    def losses(unroll):
        def last(p):  # one layer's fast path: final_carry
            one = {"lstm": p["lstm"], "dense": p["dense"]}
            return jnp.sum(jnp.sin(model.forward(one, ids, unroll=unroll)[1]))

        def every(p):  # stacked layers, outputs at every step: recurrence
            return jnp.sum(jnp.cos(model.forward(p, ids, all_steps=True, unroll=unroll)[1]))

        masked = model.forward(params, ids, valid=jnp.ones(9, bool), unroll=unroll)[1]
        return [jax.jit(jax.value_and_grad(f))(params) for f in (last, every)], masked

    (base, base_masked), (unrolled, unrolled_masked) = losses(1), losses(4)
    np.testing.assert_allclose(unrolled_masked, base_masked, rtol=1e-6, atol=1e-6)
    for (v1, g1), (v4, g4) in zip(base, unrolled, strict=True):
        np.testing.assert_allclose(v4, v1, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert model.default_unroll() == 1  # on CPU: the loops as they were


@pytest.mark.slow  # the fast tier pins a step with recurrent dropout (test_step, all at once)
def test_recurrent_dropout_gradient_equals_autodiff_of_the_masked_scan():
    """With a recurrent mask (h scaled where it re-enters the matmul), the hand-written backward
    still equals autodiff of a plain scan of the masked cell, for every input it differentiates."""
    recurrent = jax.random.normal(jax.random.key(0), (4, 16)) * 0.3
    xz = jax.random.normal(jax.random.key(1), (5, 3, 16))
    carry = tuple(jax.random.normal(jax.random.key(2), (2, 3, 4)))
    hmask = jax.random.bernoulli(jax.random.key(3), 0.6, (3, 4)) / 0.6

    def loss(recurrent, xz, carry, fast):
        if fast:
            final, hs = lstm_scan.recurrence(recurrent, xz, carry, None, lstm_scan.PLAIN, hmask)
        else:

            def step(c, x):
                c = lstm.cell_with_gates(recurrent, c, x, hmask=hmask)[0]
                return c, c[0]

            final, hs = jax.lax.scan(step, carry, xz)
        return jnp.sum(jnp.sin(hs)) + jnp.sum(final[1] ** 2)

    fast = jax.grad(loss, argnums=(0, 1, 2))(recurrent, xz, carry, True)
    plain = jax.grad(loss, argnums=(0, 1, 2))(recurrent, xz, carry, False)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    unmasked = lstm_scan.recurrence(recurrent, xz, carry)[1]
    assert not np.allclose(lstm_scan.recurrence(recurrent, xz, carry, None, lstm_scan.PLAIN,
                                                hmask)[1], unmasked)  # fmt: skip
    ones = jnp.ones((3, 4))
    np.testing.assert_array_equal(
        lstm_scan.recurrence(recurrent, xz, carry, None, lstm_scan.PLAIN, ones)[1], unmasked
    )


def test_a_shorter_length_ends_the_carry_there_and_its_gradient_equals_autodiff():
    """`length`: the final carry is the state after that many steps (the rest of the T steps
    are padding); the hand-written backward equals autodiff of a plain scan read there."""
    recurrent = jax.random.normal(jax.random.key(0), (4, 16)) * 0.3
    xz = jax.random.normal(jax.random.key(1), (7, 3, 16))
    carry = tuple(jax.random.normal(jax.random.key(2), (2, 3, 4)))

    def loss(recurrent, xz, carry, length, fast):
        if fast:
            final, hs = lstm_scan.recurrence(recurrent, xz, carry, None, lstm_scan.PLAIN, None,
                                             length)  # fmt: skip
        else:

            def step(c, x):
                c = lstm.cell_with_gates(recurrent, c, x)[0]
                return c, c

            _, (hs, cs) = jax.lax.scan(step, carry, xz)
            final = (hs[length - 1], cs[length - 1])
        weights = jnp.arange(7.0)[:, None, None]
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(final[1] ** 2) + jnp.sum(jnp.cos(final[0]))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=4)
    for length in (1, 4, 7):
        length = jnp.int32(length)
        fast = jax.tree.leaves(grad(recurrent, xz, carry, length, True))
        plain = jax.tree.leaves(grad(recurrent, xz, carry, length, False))
        for a, b in zip(fast, plain, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    short = lstm_scan.recurrence(recurrent, xz[:4], carry)
    padded = lstm_scan.recurrence(recurrent, xz, carry, None, lstm_scan.PLAIN, None, jnp.int32(4))
    for a, b in zip(jax.tree.leaves(short), jax.tree.leaves((padded[0], padded[1][:4])),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, atol=1e-6)
