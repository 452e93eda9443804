"""Scoring a text: window reading is the mean training loss of every window; stateful reading
is one pass, whatever the chunk size."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from charjax import evaluate, model


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return model.init_params(jax.random.key(seed), vocab, hidden, layers)


def _nll(logits, target) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(target)))


def test_window_score_is_the_mean_loss_of_every_window():
    params = _params()
    ids = np.asarray(jax.random.randint(jax.random.key(1), (40,), 0, 9), np.int32)
    maxlen = 5
    starts = np.arange(len(ids) - maxlen)
    windows = jnp.asarray(ids[starts[:, None] + np.arange(maxlen)])
    _, logits = model.forward(params, windows)  # one window per row, each from a zero state
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, ids[starts + maxlen])
    got = evaluate.score_ids(params, ids, mode="window", maxlen=maxlen, batch_size=8)
    assert got.chars == len(expected) == 35
    np.testing.assert_allclose(got.nats_per_char, np.mean(expected), rtol=1e-5)
    assert got.bits_per_char == pytest.approx(got.nats_per_char / math.log(2))
    assert got.perplexity == pytest.approx(math.exp(got.nats_per_char))
    strided = evaluate.score_ids(params, ids, mode="window", maxlen=maxlen, stride=3, batch_size=8)
    np.testing.assert_allclose(strided.nats_per_char, np.mean(expected[::3]), rtol=1e-5)
    np.testing.assert_allclose(  # and a window is the same read alone as in a batch
        expected[7], _nll(model.forward(params, windows[7:8])[1][0], ids[7 + maxlen]), rtol=1e-6
    )


@pytest.mark.parametrize("layers", [1, 2])
def test_stateful_score_reads_the_text_once_whatever_the_chunk(layers):
    params = _params(layers=layers)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (53,), 0, 9), np.int32)
    _, logits = model.forward(params, jnp.asarray(ids[None, :-1]), all_steps=True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0], ids[1:]).mean()
    for chunk in (7, 52, 1024):
        got = evaluate.score_ids(params, ids, mode="stateful", chunk=chunk)
        assert got.chars == 52
        np.testing.assert_allclose(got.nats_per_char, expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["window", "stateful"])
def test_scoring_reports_its_progress(mode):
    params = _params()
    ids = np.asarray(jax.random.randint(jax.random.key(3), (100,), 0, 9), np.int32)
    heard = []
    got = evaluate.score_ids(
        params, ids, mode=mode, maxlen=5, batch_size=16, chunk=30,
        progress=lambda done, total: heard.append((done, total)),
    )  # fmt: skip
    assert len(heard) == 4 if mode == "stateful" else len(heard) == 6
    assert heard[-1] == (got.chars, got.chars) and sorted(heard) == heard


def test_dynamic_evaluation_adapts_to_a_repeating_text_and_is_static_at_rate_0():
    params = _params(vocab=9, hidden=16)
    phrase = np.asarray(jax.random.randint(jax.random.key(4), (13,), 0, 9), np.int32)
    ids = np.tile(phrase, 12)
    static = evaluate.score_ids(params, ids, mode="stateful")
    still = evaluate.dynamic_score(params, ids, rate=0.0, decay=0.0, segment=10)
    assert still.chars == static.chars
    np.testing.assert_allclose(still.nats_per_char, static.nats_per_char, rtol=1e-5)
    adapted = evaluate.dynamic_score(params, ids, rate=3.0, decay=0.0, segment=10)
    assert adapted.nats_per_char < static.nats_per_char - 0.2  # 2.20 -> 1.94 nats/char
    with pytest.raises(evaluate.CharjaxError, match="--dynamic-decay"):
        evaluate.dynamic_score(params, ids, rate=1.0, decay=1.0, segment=10)


@jax.jit
def _mean_loss_grad(params, carry, inputs, targets):
    """(gradient of the mean loss of ids int[B, L] read on from `carry`, carry after them)."""

    def mean_loss(p):
        after, logits = model.forward(p, inputs, carry, all_steps=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), after

    return jax.grad(mean_loss, has_aux=True)(params)


def test_gradient_rms_is_the_root_mean_square_of_each_steps_gradient():
    params = _params(vocab=9, hidden=8)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (23,), 0, 9), np.int32)
    rms = evaluate.gradient_rms(params, ids, segment=5, streams=2)
    # by hand: two streams of 11 chars, read 5 at a time with the state carried: 2 steps
    inputs, targets = ids[:22].reshape(2, 11)[:, :10], ids[1:23].reshape(2, 11)[:, :10]
    first, carry = _mean_loss_grad(params, model.zero_carry(2, 8, 1), inputs[:, :5], targets[:, :5])
    second, _ = _mean_loss_grad(params, carry, inputs[:, 5:], targets[:, 5:])
    expected = jax.tree.map(lambda a, b: jnp.sqrt((a * a + b * b) / 2), first, second)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), rms.scale,
                 expected)  # fmt: skip
    # each weight's share of the pull: the scale over the sum of the tensors' mean scales
    assert sum(float(jnp.mean(w)) for w in jax.tree.leaves(rms.pull)) == pytest.approx(1.0)
    with pytest.raises(evaluate.CharjaxError, match="--dynamic-rule sgd"):
        evaluate.gradient_rms(params, ids[:5], segment=5)


def test_the_rms_step_divides_by_the_gradient_rms_and_pulls_back_by_each_weights_share():
    params, base = _params(vocab=9, hidden=8), _params(vocab=9, hidden=8, seed=1)
    ids = np.asarray(jax.random.randint(jax.random.key(3), (41,), 0, 9), np.int32)
    rms = evaluate.gradient_rms(base, ids, segment=5, streams=4)
    inputs, targets, valid = ids[:5], ids[1:6], np.ones(5, bool)
    carry = model.zero_carry(1, 8, 1)
    step = functools.partial(evaluate._adapt, dtype="float32")
    grads, _ = _mean_loss_grad(params, carry, inputs[None], targets[None])
    moved, _, _ = step(params, base, carry, inputs, targets, valid, 0.01, 0.0, rms)
    expected = jax.tree.map(lambda p, g, s: p - 0.01 * g / (s + evaluate.RMS_EPSILON), params,
                            grads, rms.scale)  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), moved,
                 expected)  # fmt: skip
    pulled, _, _ = step(params, base, carry, inputs, targets, valid, 0.0, 0.5, rms)
    expected = jax.tree.map(lambda p, b, w: p + jnp.minimum(0.5 * w, 1.0) * (b - p), params, base,
                            rms.pull)  # fmt: skip
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), pulled,
                 expected)  # fmt: skip


def test_rms_dynamic_evaluation_adapts_to_a_repeating_text_and_is_static_at_rate_0():
    params = _params(vocab=9, hidden=16)
    phrase = np.asarray(jax.random.randint(jax.random.key(4), (13,), 0, 9), np.int32)
    ids = np.tile(phrase, 12)
    rms = evaluate.gradient_rms(
        params, np.asarray(jax.random.randint(jax.random.key(5), (400,), 0, 9)), segment=10
    )
    static = evaluate.score_ids(params, ids, mode="stateful")
    still = evaluate.dynamic_score(params, ids, rate=0.0, decay=0.1, segment=10, rms=rms)
    np.testing.assert_allclose(still.nats_per_char, static.nats_per_char, rtol=1e-5)
    adapted = evaluate.dynamic_score(params, ids, rate=0.01, decay=0.0, segment=10, rms=rms)
    assert adapted.nats_per_char < static.nats_per_char - 0.2
