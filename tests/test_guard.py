"""The divergence guard's decision, without training: keep, retry at a lower rate, give up."""

import math

import jax.numpy as jnp

from charjax import guard


def test_a_sound_epoch_is_kept():
    assert guard.judge(3, 1.5, True, 1.4, 1.2, 0) == guard.Verdict(guard.KEEP)
    assert guard.judge(1, 2.0, True, math.inf, 1.2, 0).action == guard.KEEP  # no best yet
    assert guard.judge(3, 9.0, True, 1.4, 0.0, 0).action == guard.KEEP  # guard off: any loss


def test_a_blow_up_is_retried_with_the_reason():
    nan = guard.judge(2, math.nan, True, 1.4, 1.2, 0)
    assert nan.action == guard.RETRY and nan.reason == "the loss became nan"
    inf = guard.judge(2, math.inf, True, 1.4, 1.2, 3)
    assert inf.action == guard.RETRY and inf.reason == "the loss became inf"
    state = guard.judge(2, 1.3, False, 1.4, 1.2, 0)
    assert state.action == guard.RETRY and "parameters became non-finite" in state.reason
    high = guard.judge(2, 1.7, True, 1.4, 1.2, 0)
    assert high.action == guard.RETRY
    assert high.reason == "the loss 1.7000 is above 1.2 x the best epoch's 1.4000"
    assert guard.judge(2, 1.68, True, 1.4, 1.2, 0).action == guard.KEEP  # exactly at the bound


def test_guard_off_or_too_many_cuts_give_up_in_one_line():
    off = guard.judge(4, math.nan, True, 1.4, 0.0, 0)
    assert off.action == guard.GIVE_UP and "\n" not in off.message
    assert off.message.startswith("epoch 4: the loss became nan; nothing was saved")
    assert "--guard 1.2" in off.message
    hopeless = guard.judge(4, math.nan, True, 1.4, 1.2, guard.MAX_CUTS)
    assert hopeless.action == guard.GIVE_UP
    assert f"still after {guard.MAX_CUTS} restarts" in hopeless.message
    assert guard.judge(4, math.nan, True, 1.4, 1.2, guard.MAX_CUTS - 1).action == guard.RETRY


def test_all_finite_looks_at_every_float_leaf():
    tree = {"w": jnp.ones(3), "step": jnp.int32(2), "opt": (jnp.zeros(2),)}
    assert guard.all_finite(tree)
    assert not guard.all_finite({**tree, "opt": (jnp.array([0.0, jnp.inf]),)})
    assert not guard.all_finite({**tree, "w": jnp.array([jnp.nan, 1.0, 2.0])})
