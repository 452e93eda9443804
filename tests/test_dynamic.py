"""Dynamic evaluation: a model that adapts to the text it reads scores a repeating text better,
and at rate 0 exactly as the static stateful score; the RMS rule's statistics and step by hand;
the settings the flags choose; and the scores of a fixed model, recorded."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from util import bound, forward, init_params

from charjax import corpus, dynamic, evaluate, inference, model
from charjax.errors import CharjaxError
from charjax.run_dir import Meta


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return init_params(jax.random.key(seed), vocab, hidden, layers)


def test_dynamic_evaluation_adapts_to_a_repeating_text_and_is_static_at_rate_0():
    params = _params(vocab=9, hidden=16)
    phrase = np.asarray(jax.random.randint(jax.random.key(4), (13,), 0, 9), np.int32)
    ids = np.tile(phrase, 12)
    static = evaluate.score_ids(bound(params), ids, mode="stateful")
    still = dynamic.score(bound(params), ids, rate=0.0, decay=0.0, segment=10)
    assert still.chars == static.chars
    np.testing.assert_allclose(still.nats_per_char, static.nats_per_char, rtol=1e-5, atol=1e-6)
    adapted = dynamic.score(bound(params), ids, rate=3.0, decay=0.0, segment=10)
    assert adapted.nats_per_char < static.nats_per_char - 0.2  # 2.20 -> 1.94 nats/char
    with pytest.raises(CharjaxError, match="--dynamic-decay"):
        dynamic.score(bound(params), ids, rate=1.0, decay=1.0, segment=10)


@jax.jit
def _mean_loss_grad(params, carry, inputs, targets):
    """(gradient of the mean loss of ids int[B, L] read on from `carry`, carry after them)."""

    def mean_loss(p):
        after, logits = forward(p, inputs, carry, all_steps=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), after

    return jax.grad(mean_loss, has_aux=True)(params)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_gradient_rms_is_the_root_mean_square_of_each_steps_gradient():
    params = _params(vocab=9, hidden=8)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (23,), 0, 9), np.int32)
    rms = dynamic.gradient_rms(bound(params), ids, segment=5, streams=2)
    # by hand: two streams of 11 chars, read 5 at a time with the state carried: 2 steps
    inputs, targets = ids[:22].reshape(2, 11)[:, :10], ids[1:23].reshape(2, 11)[:, :10]
    first, carry = _mean_loss_grad(params, model.zero_carry(2, 8, 1), inputs[:, :5], targets[:, :5])
    second, _ = _mean_loss_grad(params, carry, inputs[:, 5:], targets[:, 5:])
    expected = jax.tree.map(lambda a, b: jnp.sqrt((a * a + b * b) / 2), first, second)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
                 rms.scale.params, expected)  # fmt: skip
    # each weight's share of the pull: the scale over the sum of the tensors' mean scales
    assert sum(float(jnp.mean(w)) for w in jax.tree.leaves(rms.pull)) == pytest.approx(1.0)
    with pytest.raises(CharjaxError, match="--dynamic-rule sgd"):
        dynamic.gradient_rms(bound(params), ids[:5], segment=5)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_the_rms_step_divides_by_the_gradient_rms_and_pulls_back_by_each_weights_share():
    params, base = _params(vocab=9, hidden=8), _params(vocab=9, hidden=8, seed=1)
    ids = np.asarray(jax.random.randint(jax.random.key(3), (41,), 0, 9), np.int32)
    rms = dynamic.gradient_rms(bound(base), ids, segment=5, streams=4)
    inputs, targets, valid = ids[:5], ids[1:6], np.ones(5, bool)
    carry = model.zero_carry(1, 8, 1)
    net, base_net = bound(params), bound(base)
    grads, _ = _mean_loss_grad(params, carry, inputs[None], targets[None])
    moved, _, _ = dynamic._adapt(net, base_net, carry, inputs, targets, valid, 0.01, 0.0, rms)
    expected = jax.tree.map(lambda p, g, s: p - 0.01 * g / (s + dynamic.RMS_EPSILON), params,
                            grads, rms.scale.params)  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 moved.params, expected)  # fmt: skip
    pulled, _, _ = dynamic._adapt(net, base_net, carry, inputs, targets, valid, 0.0, 0.5, rms)
    expected = jax.tree.map(lambda p, b, w: p + jnp.minimum(0.5 * w, 1.0) * (b - p), params, base,
                            rms.pull.params)  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 pulled.params, expected)  # fmt: skip


@pytest.mark.slow  # the fast tier pins the RMS rule's recorded scores
def test_rms_dynamic_evaluation_adapts_to_a_repeating_text_and_is_static_at_rate_0():
    params = _params(vocab=9, hidden=16)
    phrase = np.asarray(jax.random.randint(jax.random.key(4), (13,), 0, 9), np.int32)
    ids = np.tile(phrase, 12)
    rms = dynamic.gradient_rms(
        bound(params), np.asarray(jax.random.randint(jax.random.key(5), (400,), 0, 9)), segment=10
    )
    static = evaluate.score_ids(bound(params), ids, mode="stateful")
    still = dynamic.score(bound(params), ids, rate=0.0, decay=0.1, segment=10, rms=rms)
    np.testing.assert_allclose(still.nats_per_char, static.nats_per_char, rtol=1e-5, atol=1e-6)
    adapted = dynamic.score(bound(params), ids, rate=0.01, decay=0.0, segment=10, rms=rms)
    assert adapted.nats_per_char < static.nats_per_char - 0.2


def test_settings_are_the_rules_defaults_unless_given_and_tuning_takes_no_rates():
    assert dynamic.settings() == (3e-4, 0.1, "rms") and dynamic.DEFAULT_RULE == "rms"
    assert dynamic.settings("sgd") == (0.2, 0.0, "sgd")
    assert dynamic.settings("sgd", 0.5) == (0.5, 0.0, "sgd")
    assert dynamic.settings("rms", None, 0.1) == (3e-4, 0.1, "rms")
    assert dynamic.settings("rms", tune=True) == (None, None, "rms")
    with pytest.raises(CharjaxError, match="pass one or the others"):
        dynamic.settings("rms", None, 0.1, tune=True)
    with pytest.raises(CharjaxError, match="--dynamic-rule must be one of sgd, rms"):
        dynamic.settings("adam")


# The dynamic scores of a fixed model (initialised from key 0, never trained) on the tiny
# corpus's held-out tail, recorded at full precision: (static nats/char, dynamic nats/char, lr,
# decay, nats/char of each tuning pair). The same numbers on a CPU; float rounding elsewhere.
STATIC = 3.4115436833079267
RECORDED = {
    "sgd": (3.3795297696040225, 0.2, 0.0, []),
    "rms": (3.4141592403034586, 3e-4, 0.1, []),
    "sgd tuned": (3.3644075026878943, 0.3, 0.0, [
        3.3960603206001934, 3.3655328127607027, 3.3269929071167605, 3.295178331921448,
    ]),
    "rms tuned": (3.4145433824140947, 5e-4, 0.02, [
        3.408965173079141, 3.409108540520596, 3.4092575437459516, 3.407907121744587,
        3.408193224039509, 3.4084899748989086, 3.4068575240858836, 3.4072895625128816,
        3.4077373581316004, 3.4046151721896836, 3.4053694758582953, 3.406150530331099,
    ]),
}  # fmt: skip


@pytest.mark.parametrize(
    "case",  # tuning scores each pair of settings: 12 passes for RMS, in the slow tier
    [pytest.param(c, marks=[pytest.mark.slow] if c == "rms tuned" else []) for c in RECORDED],
)
def test_dynamic_scores_of_a_fixed_model_are_the_recorded_ones(case, tiny_cfg, tmp_path,
                                                               monkeypatch):  # fmt: skip
    # a slice of the 820 training chars for the statistics and the tuning (all of them is
    # less than RMS_CHARS and TUNE_CHARS)
    monkeypatch.setattr(dynamic, "RMS_CHARS", 300)
    monkeypatch.setattr(dynamic, "TUNE_CHARS", 200)
    text = corpus.load(tiny_cfg)
    params = _params(len(text.vocab.chars), tiny_cfg.hidden, tiny_cfg.layers)
    meta = Meta(tiny_cfg, text.vocab.chars, text.sha256, text.prime, 0)
    rule, tuned = case.split()[0], case.endswith("tuned")
    chosen = dynamic.settings(rule, tune=tuned)
    got, _ = inference.score_text(
        inference.SavedModel(params, meta), None, directory=tmp_path, dynamic=chosen
    )
    d = got["dynamic"]
    nats, lr, decay, tried = RECORDED[case]
    assert got["nats_per_char"] == pytest.approx(STATIC, rel=1e-6)
    assert d["chars_scored"] == got["chars_scored"] + tiny_cfg.maxlen - 1 == 91
    assert (d["rule"], d["lr"], d["decay"], d["segment"]) == (rule, lr, decay, tiny_cfg.maxlen)
    assert d["nats_per_char"] == pytest.approx(nats, rel=1e-6)
    assert [t["nats_per_char"] for t in d.get("tried", [])] == pytest.approx(tried, rel=1e-6)
    assert d.get("tuned_on_chars") == (200 if tuned else None)
