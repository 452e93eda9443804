"""The original recipe in Keras 3 on its JAX backend: windows/s over STEPS `train_on_batch`
calls, median of 3, compile apart. Run in its own process (`child.keras`): `python -m
benchmarks.keras_baseline STEPS` prints one JSON line."""

from __future__ import annotations

import itertools
import json
import os
import sys


def keras_baseline(steps: int) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras  # a dev extra: imported only here, in its own process
    import numpy as np

    from benchmarks.measure import default_corpus
    from benchmarks.timing import time_calls
    from charjax import batching

    cfg, text = default_corpus()
    vocab = text.vocab.size
    m = keras.Sequential(
        [
            keras.Input((cfg.maxlen, vocab)),
            keras.layers.LSTM(cfg.hidden),
            keras.layers.Dense(vocab, activation="softmax"),
        ]
    )
    m.compile(
        optimizer=keras.optimizers.RMSprop(cfg.learning_rate), loss="categorical_crossentropy"
    )
    eye = np.eye(vocab, dtype=np.float32)
    starts = batching.window_starts(len(text.ids), cfg.maxlen, cfg.step)
    rng = np.random.default_rng(0)

    def batch():
        s = rng.choice(starts, cfg.batch_size)
        x = text.ids[s[:, None] + np.arange(cfg.maxlen)]
        return eye[x], eye[text.ids[s + cfg.maxlen]]

    batches = itertools.cycle([batch() for _ in range(10)])
    timed = time_calls(
        lambda: m.train_on_batch(*next(batches)),
        3,
        calls=steps,
        work=lambda _: cfg.batch_size,
    )
    return {
        "keras_windows_per_s": timed.rate,
        "keras_compile_s": timed.compile_s,
        "keras_version": keras.__version__,
    }


if __name__ == "__main__":
    print(json.dumps(keras_baseline(int(sys.argv[1]))))
