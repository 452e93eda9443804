"""The original recipe in Keras 3 as the book writes it, on the backend KERAS_BACKEND names
(tensorflow or jax): one-hot windows, `LSTM(128)` + softmax `Dense`, RMSprop 0.01,
`model.fit(batch_size=128)` over the windows (a callback times the batches after the warm-up
ones). Sampling: the book's loop, `model.predict` on the last 60 chars one-hot, once a char.
`KERAS_BACKEND=tensorflow python -m benchmarks.peers.keras_peer --steps N`."""

from __future__ import annotations

import os

from benchmarks.environment import versions
from benchmarks.peers import recipe as r


def main() -> None:
    args = r.arguments("keras_peer")
    import keras  # the [peers] extra (and tensorflow-cpu for the tensorflow backend)
    import numpy as np

    keras.utils.set_random_seed(0)
    ids, vocab = r.corpus()
    batches = r.batches(ids, r.WARMUP_STEPS + args.steps)
    eye = np.eye(vocab, dtype=bool)
    x = np.concatenate([eye[b] for b, _ in batches])  # [windows, 60, vocab] bool, as the book
    y = np.concatenate([eye[t] for _, t in batches])

    model = keras.Sequential([
        keras.Input((r.MAXLEN, vocab)),
        keras.layers.LSTM(r.HIDDEN),
        keras.layers.Dense(vocab, activation="softmax"),
    ])  # fmt: skip
    model.compile(
        optimizer=keras.optimizers.RMSprop(r.LEARNING_RATE, rho=r.RHO, epsilon=r.EPSILON),
        loss="categorical_crossentropy",
    )

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(r.clock())

    clock = Clock()
    t0 = r.clock()
    model.fit(x, y, batch_size=r.BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    warm = clock.ends[r.WARMUP_STEPS - 1]
    train_s = clock.ends[-1] - warm

    def sample_text(chars: int):
        window = list(r.prime(ids))
        out = []
        for _ in range(chars):
            sampled = np.zeros((1, r.MAXLEN, vocab))
            for t, c in enumerate(window):
                sampled[0, t, c] = 1.0
            preds = model.predict(sampled, verbose=0)[0].astype("float64")
            preds = np.exp(np.log(preds + 1e-12) / r.TEMPERATURE)
            nxt = int(np.argmax(np.random.multinomial(1, preds / preds.sum(), 1)))
            out.append(nxt)
            window = window[1:] + [nxt]
        return out

    sample_text(5)  # the first predict compiles
    t1 = r.clock()
    sample_text(r.SAMPLE_CHARS)
    sample_s = r.clock() - t1
    backend = os.environ.get("KERAS_BACKEND", keras.backend.backend())
    r.report(
        train_s=train_s, steps=args.steps, first_s=warm - t0, sample_s=sample_s,
        train=f"model.fit(batch_size=128) on one-hot windows, {backend} backend",
        sample="the book's loop: model.predict on the last 60 chars one-hot, once a char",
        packages=versions("keras", "tensorflow-cpu" if backend == "tensorflow" else "jax"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
