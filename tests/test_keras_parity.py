"""charjax with default settings computes what Keras 3's LSTM(128) + Dense + RMSprop computes."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from util import jit_forward

from charjax.config import Config  # noqa: E402
from charjax.step import init_state, train_step  # noqa: E402

keras = pytest.importorskip("keras")

VOCAB, MAXLEN, BATCH = 59, 60, 32


def _keras_model(params):
    assert keras.backend.backend() == "jax"
    m = keras.Sequential(
        [
            keras.Input((MAXLEN, VOCAB)),
            keras.layers.LSTM(128),
            keras.layers.Dense(VOCAB, activation="softmax"),
        ]
    )
    p = jax.tree.map(np.asarray, params)
    m.layers[0].set_weights([p["lstm"]["kernel"], p["lstm"]["recurrent_kernel"], p["lstm"]["bias"]])
    m.layers[1].set_weights([p["dense"]["kernel"], p["dense"]["bias"]])
    return m


@pytest.fixture(scope="module")
def setup():
    cfg = Config()
    state = init_state(jax.random.key(0), VOCAB, cfg)
    k1, k2 = jax.random.split(jax.random.key(1))
    inputs = jax.random.randint(k1, (BATCH, MAXLEN), 0, VOCAB)
    targets = jax.random.randint(k2, (BATCH,), 0, VOCAB)
    onehot = np.eye(VOCAB, dtype=np.float32)
    return cfg, state, inputs, targets, onehot[np.asarray(inputs)], onehot[np.asarray(targets)]


def test_same_probabilities(setup):
    cfg, state, inputs, _, x, _ = setup
    m = _keras_model(state.params)
    _, logits = jit_forward(state.params, inputs)
    ours = jax.nn.softmax(logits)
    theirs = np.asarray(m.predict(x, verbose=0))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_same_parameters_after_one_rmsprop_step(setup):
    cfg, state, inputs, targets, x, y = setup
    m = _keras_model(state.params)
    opt = keras.optimizers.RMSprop(learning_rate=cfg.learning_rate)
    assert (opt.rho, opt.epsilon) == (cfg.rho, cfg.epsilon)
    m.compile(optimizer=opt, loss="categorical_crossentropy")
    keras_loss = m.train_on_batch(x, y)
    new, metrics = jax.jit(train_step, static_argnames="cfg")(
        state, inputs, targets, jnp.ones(BATCH), cfg
    )
    loss = metrics["loss"]
    assert float(loss) == pytest.approx(float(keras_loss), rel=1e-5)
    lstm_w, dense_w = m.layers[0].get_weights(), m.layers[1].get_weights()
    p = new.params
    ours = [
        p["lstm"]["kernel"],
        p["lstm"]["recurrent_kernel"],
        p["lstm"]["bias"],
        p["dense"]["kernel"],
        p["dense"]["bias"],
    ]
    for a, b in zip(ours, lstm_w + dense_w, strict=False):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)
    # and the step really moved the weights (so the comparison is not of two untouched copies)
    moved = p["lstm"]["recurrent_kernel"] - state.params["lstm"]["recurrent_kernel"]
    assert np.abs(np.asarray(moved)).max() > 1e-3
