"""The fused Pallas loops (`--lstm-kernel pallas`) against the XLA scans: values and gradients of
stacked layers with outputs at every step and a given carry, and a whole training epoch of the
original model (its own fast path). On CPU the kernels run in Pallas' interpret mode; on a GPU
(the device check runs this file there) they are the compiled kernels, whose float32 matmuls may
use TF32 as XLA's do, hence the looser tolerance there."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from charjax import lstm, lstm_fused, model
from charjax.draws import Draws
from charjax.epoch import train_epoch
from charjax.step import init_state

TOL = dict(rtol=1e-5, atol=1e-6) if jax.default_backend() == "cpu" else dict(rtol=2e-2, atol=2e-3)


def _both(f):
    """f(kernel) for the XLA scans and the fused kernels."""
    return f("xla"), f("pallas")


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **TOL)
        assert np.abs(np.asarray(x)).max() > 1e-3  # not vacuously equal


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_stacked_layers_all_steps_and_a_given_carry_match():
    params = model.init_params(jax.random.key(4), 9, 16, layers=2)
    ids = jax.random.randint(jax.random.key(5), (16, 4), 0, 9)
    probe = jax.random.normal(jax.random.key(6), (16, 4, 9))
    carry = tuple(
        tuple(jax.random.normal(jax.random.key(7 + i), (2, 16, 16)) * 0.5) for i in range(2)
    )

    def value_and_grad(kernel):
        def f(p, carry):
            _, logits = model.forward(p, ids, carry, all_steps=True, kernel=kernel)
            return jnp.sum(jnp.cos(logits) * probe)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(params, carry)

    _assert_close(*_both(value_and_grad))


def test_shapes_the_kernels_cannot_tile_take_the_xla_loops():
    assert lstm_fused.supported(128, 128) and lstm_fused.supported(64, 16)
    assert not lstm_fused.supported(64, 256)  # a gate block over a GPU's shared memory
    assert not lstm_fused.supported(20, 128)  # rows not in whole blocks of 16
    assert not lstm_fused.supported(32, 24)  # hidden not a power of two
    params = model.init_params(jax.random.key(1), 5, 8)  # hidden 8: below the tile
    ids = jnp.zeros((3, 4), jnp.int32)
    fused = model.forward(params, ids, kernel="pallas")[1]
    np.testing.assert_array_equal(fused, model.forward(params, ids, kernel="xla")[1])


def test_a_varied_window_length_takes_the_xla_loops_and_ends_its_carry_there():
    """--vary-length: the fused kernels end at the last step, so a `length` steps aside."""
    params = model.init_params(jax.random.key(4), 9, 16)
    ids = jax.random.randint(jax.random.key(5), (16, 6), 0, 9)
    kw = dict(all_steps=True, draws=Draws(length=jnp.int32(4)))
    fused = model.forward(params, ids, kernel="pallas", **kw)
    _assert_close(fused, model.forward(params, ids, kernel="xla", **kw))
    _assert_close(fused[0], model.forward(params, ids[:, :4], kernel="xla", all_steps=True)[0])


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_a_training_epoch_matches(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, steps_per_call=2, max_chars=3000)
    from charjax import corpus as corpora

    text = corpora.load(cfg)

    def trained(kernel):
        run = dataclasses.replace(cfg, lstm_kernel=kernel)
        state = init_state(jax.random.key(0), text.vocab.size, run)
        return train_epoch(state, text.ids, len(text.ids), jax.random.key(1), 1, run)

    (xla_state, xla_loss), (fused_state, fused_loss) = _both(trained)
    _assert_close(xla_state.params, fused_state.params)
    assert fused_loss == pytest.approx(xla_loss, rel=TOL["rtol"])


def test_row_sums_by_one_hot_matmul_equal_the_scatter_add():
    """The GPU way of the input kernel's gradient (deterministic there) against the CPU way."""
    values = jax.random.normal(jax.random.key(0), (50, 8))
    ids = jax.random.randint(jax.random.key(1), (50,), 0, 6)
    scattered = lstm.row_sums(values, ids, 7, scatter=True)
    np.testing.assert_allclose(lstm.row_sums(values, ids, 7, scatter=False), scattered, atol=1e-6)
    np.testing.assert_array_equal(scattered[6], 0.0)  # an id never seen
    # numpy adds in another order than the device: float32 rounding apart (~1 ulp of the sum)
    np.testing.assert_allclose(scattered[ids[0]], values[ids == ids[0]].sum(0), atol=1e-6)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_the_kernels_lower_to_triton_for_a_gpu(dtype):
    """The compiled (not interpreted) kernels at the default recipe's shape go through Pallas'
    Triton lowering on a machine without a GPU: the kernel's shapes and ops are ones it takes."""
    steps, batch, hidden = 60, 128, 128
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    seq, state, gates = f32(steps, batch, hidden), f32(batch, hidden), f32(steps, batch, 4 * hidden)
    triton = "__gpu$xla.gpu.triton"
    checks = [export.DisabledSafetyCheck.custom_call(triton)]

    def forward(w, xz, h, c):
        return lstm_fused.scan_saving(w, xz, (h, c), dtype, interpret=False)

    def backward(w, c_prev, hs, cs, g, dh, dc, dhs):
        saved = (hs, cs, g)
        return lstm_fused.backward_loop(w, c_prev, saved, (dh, dc), dhs, dtype, interpret=False)

    w = f32(hidden, 4 * hidden)
    for f, args in ((forward, (w, gates, state, state)),
                    (backward, (w, seq, seq, seq, gates, state, state, seq))):  # fmt: skip
        lowered = export.export(jax.jit(f), platforms=("cuda",), disabled_checks=checks)(*args)
        assert lowered.mlir_module().count(triton) == 1
