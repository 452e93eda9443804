"""Scoring a text: window reading is the mean training loss of every window; stateful reading
is one pass, whatever the chunk size."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from util import bound, forward, init_params

from charjax import evaluate


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return init_params(jax.random.key(seed), vocab, hidden, layers)


def _nll(logits, target) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(target)))


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_window_score_is_the_mean_loss_of_every_window():
    params = _params()
    ids = np.asarray(jax.random.randint(jax.random.key(1), (40,), 0, 9), np.int32)
    maxlen = 5
    starts = np.arange(len(ids) - maxlen)
    windows = jnp.asarray(ids[starts[:, None] + np.arange(maxlen)])
    _, logits = forward(params, windows)  # one window per row, each from a zero state
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, ids[starts + maxlen])
    got = evaluate.score_ids(bound(params), ids, mode="window", maxlen=maxlen, batch_size=8)
    assert got.chars == len(expected) == 35
    np.testing.assert_allclose(got.nats_per_char, np.mean(expected), rtol=1e-5, atol=1e-6)
    assert got.bits_per_char == pytest.approx(got.nats_per_char / math.log(2))
    assert got.perplexity == pytest.approx(math.exp(got.nats_per_char))
    strided = evaluate.score_ids(
        bound(params), ids, mode="window", maxlen=maxlen, stride=3, batch_size=8
    )
    np.testing.assert_allclose(strided.nats_per_char, np.mean(expected[::3]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(  # and a window is the same read alone as in a batch
        expected[7], _nll(forward(params, windows[7:8])[1][0], ids[7 + maxlen]), rtol=1e-6
    )


@pytest.mark.parametrize("layers", [1, 2])
def test_stateful_score_reads_the_text_once_whatever_the_chunk(layers):
    params = _params(layers=layers)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (53,), 0, 9), np.int32)
    _, logits = forward(params, jnp.asarray(ids[None, :-1]), all_steps=True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0], ids[1:]).mean()
    for chunk in (7, 52, 1024):
        got = evaluate.score_ids(bound(params), ids, mode="stateful", chunk=chunk)
        assert got.chars == 52
        np.testing.assert_allclose(got.nats_per_char, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["window", "stateful"])
def test_scoring_reports_its_progress(mode):
    params = _params()
    ids = np.asarray(jax.random.randint(jax.random.key(3), (100,), 0, 9), np.int32)
    heard = []
    got = evaluate.score_ids(
        bound(params), ids, mode=mode, maxlen=5, batch_size=16, chunk=30,
        progress=lambda done, total: heard.append((done, total)),
    )  # fmt: skip
    assert len(heard) == 4 if mode == "stateful" else len(heard) == 6
    assert heard[-1] == (got.chars, got.chars) and sorted(heard) == heard
