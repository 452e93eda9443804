"""Benchmarks that need a process of their own, run as `python -m charjax.bench.child`:
`train STEPS DIR` (a real full-corpus training run, for its peak memory) and `keras STEPS` (the
original recipe in Keras 3 on its JAX backend, set up as a plain Keras user has it). Each
prints one JSON line; `run` starts one and adds the child's peak RSS."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def run(args: list[str], env: dict | None = None) -> dict:
    """Run this module with `args` in a child process -> its JSON line + `child_peak_rss_mb`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "charjax.bench.child", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["child_peak_rss_mb"] = max(peak_kb, before) / 1024
    return result


def train(steps: int, directory: str) -> dict:
    """A training run on the full corpus: a whole epoch (steps=0) or `steps` steps of one."""
    from charjax import parallel

    parallel.request_cpu_devices()
    parallel.tune_host_malloc()
    from charjax import runner
    from charjax.cli.common import quiet_process
    from charjax.config import Config

    quiet_process()  # as charjax-train does: orbax's logs of a save kept out of the output

    cfg = Config(epochs=1, temperatures=())
    if steps:  # cut the corpus so that one epoch is about `steps` batches
        cfg = cfg.replace(max_chars=steps * cfg.batch_size * cfg.step + cfg.maxlen + 1)
    runner.train_run(cfg, directory, log=lambda *a: None)
    return {"run": "1 full epoch" if not steps else f"1 epoch of {steps} steps"}


def keras(steps: int) -> dict:
    """The original recipe in Keras 3: windows/s over `steps` train_on_batch calls."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras  # a dev extra: imported only here, in its own process
    import numpy as np

    from charjax import batching
    from charjax.bench.measure import default_corpus

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

    batches = [batch() for _ in range(10)]
    t0 = time.perf_counter()
    m.train_on_batch(*batches[0])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(steps):
            m.train_on_batch(*batches[i % 10])
        times.append(time.perf_counter() - t0)
    return {
        "keras_windows_per_s": steps * cfg.batch_size / statistics.median(times),
        "keras_compile_s": compile_s,
        "keras_version": keras.__version__,
    }


if __name__ == "__main__":
    what, steps, *rest = sys.argv[1:]
    result = train(int(steps), *rest) if what == "train" else keras(int(steps))
    print(json.dumps(result))
