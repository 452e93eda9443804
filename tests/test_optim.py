"""The update rule: learning-rate schedules, clipping, Adam."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charjax import optim
from charjax.config import Config


def test_learning_rate_schedules():
    cfg = Config(schedule="cosine", warmup=10, learning_rate=1.0)
    f = [float(optim.lr_factor(cfg, s, 110)) for s in (0, 4, 9, 10, 60, 110, 500)]
    assert f[:3] == pytest.approx([0.1, 0.5, 1.0])
    assert f[3] == pytest.approx(1.0)
    assert f[4] == pytest.approx(optim.MIN_LR_FRACTION + (1 - optim.MIN_LR_FRACTION) * 0.5)
    assert f[5] == f[6] == pytest.approx(optim.MIN_LR_FRACTION)
    straight = Config(schedule="linear", warmup=10)
    f = [float(optim.lr_factor(straight, s, 110)) for s in (4, 10, 60, 109, 110, 500)]
    assert f == pytest.approx([0.5, 1.0, 0.5, 0.01, 0.01, 0.01])  # never 0: the last step moves
    flat = Config(warmup=4)
    assert [float(optim.lr_factor(flat, s, 0)) for s in (0, 3, 99)] == [0.25, 1.0, 1.0]


def test_clipping_and_adam_are_what_the_optimizer_does():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    big = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50: clipped to 5
    small = {"w": jnp.array([0.6, 0.0, 0.8])}  # norm 1: kept

    def two_steps(opt, first, second):
        state = opt.init(params)
        _, state = opt.update(first, state, params)
        return opt.update(second, state, params)[0]["w"]

    cfg = Config(optimizer="adam", clip_norm=5.0, learning_rate=0.1)
    ref = optax.adam(0.1, eps=cfg.epsilon)
    got = two_steps(optim.make_optimizer(cfg), big, small)
    np.testing.assert_allclose(
        got, two_steps(ref, {"w": big["w"] / 10}, small), rtol=1e-6, atol=1e-8
    )
    assert not np.allclose(got, two_steps(ref, big, small), rtol=1e-3)
