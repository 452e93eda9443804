"""`charjax-bench`: training windows/s, compile time, sampling latency and peak memory.

Timings are medians of repeats measured in one process; compile time is reported apart. The
peak-RSS figure and the optional Keras baseline run in child processes so that neither
disturbs the in-process numbers (the Keras child also gets JAX's default device setup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

from charjax import parallel


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _corpus():
    import jax.numpy as jnp

    from charjax import data, runner
    from charjax.config import Config

    cfg = Config()
    corpus = runner.load_corpus(cfg)
    starts = data.window_starts(len(corpus.ids), cfg.maxlen, cfg.step)
    return cfg, corpus, jnp.asarray(corpus.ids), jnp.asarray(starts)


def bench_train(steps: int, repeats: int) -> dict:
    """Windows/s of the default recipe over `steps` optimizer steps, median of `repeats`."""
    import jax

    from charjax import train

    cfg, corpus, ids, starts = _corpus()
    mesh = parallel.data_mesh()
    chunks_per_repeat = max(1, steps // cfg.steps_per_call)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, cfg)
    plan_starts, plan_weights = train.placed_plan(jax.random.key(1), 1, starts, cfg, mesh)
    state, ids = parallel.put((state, ids), parallel.replicated(mesh))
    needed = 2 + repeats * chunks_per_repeat
    if needed > plan_starts.shape[0]:
        raise SystemExit(f"at most {plan_starts.shape[0] * cfg.steps_per_call} steps fit an epoch")
    chunk = iter(range(needed))

    def run_chunks(n):
        nonlocal state
        for _ in range(n):
            state, losses = train.train_chunk(
                state, ids, plan_starts, plan_weights, next(chunk), train.NO_CONTEXT, cfg, mesh
            )
            jax.block_until_ready(losses)

    first, _ = _median_time(lambda: run_chunks(1), 1)
    warm, _ = _median_time(lambda: run_chunks(1), 1)
    per_repeat, times = _median_time(lambda: run_chunks(chunks_per_repeat), repeats)
    windows = chunks_per_repeat * cfg.steps_per_call * cfg.batch_size
    return {
        "train_windows_per_s": windows / per_repeat,
        "train_windows_per_s_repeats": [windows / t for t in times],
        "train_s_per_epoch": len(starts) / (windows / per_repeat),
        "train_steps_per_repeat": chunks_per_repeat * cfg.steps_per_call,
        "compile_s": max(first - warm, 0.0),
        "devices": mesh.size,
    }


def bench_sample(repeats: int) -> dict:
    """Milliseconds for 400 chars after compile: window/stateful x 1/4 temperatures per call."""
    import jax

    from charjax import model, sample

    cfg, corpus, _, _ = _corpus()
    params = model.init_params(jax.random.key(0), corpus.vocab.size, cfg.hidden)
    prime = corpus.ids[: cfg.maxlen]
    out = {}
    for mode in sample.MODES:
        for temps in ([0.5], [0.2, 0.5, 1.0, 1.2]):
            keys = iter(range(repeats + 1))

            def call(mode=mode, temps=temps, keys=keys):
                ids = sample.generate(
                    params,
                    prime,
                    jax.random.key(next(keys)),
                    temps,
                    length=400,
                    mode=mode,
                    maxlen=cfg.maxlen,
                )
                jax.block_until_ready(ids)

            compile_s, _ = _median_time(call, 1)
            median, _ = _median_time(call, repeats)
            out[f"{mode}_{len(temps)}temp"] = {"ms": 1000 * median, "compile_s": compile_s}
    return {"sample_ms": out}


def _child(args: list[str], env: dict | None = None) -> dict:
    """Run this module in a child process -> its last JSON line, plus `child_peak_rss_mb`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "charjax.bench", *args],
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


def bench_memory(steps: int) -> dict:
    """Peak RSS of a full-corpus training run (a real `charjax-train`, in a child process)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = _child(["--child-train", str(steps), tmp])
    return {"peak_rss_mb": res["child_peak_rss_mb"], "peak_rss_run": res["run"]}


def _child_train(steps: int, directory: str) -> None:
    """A training run on the full corpus: a whole epoch (steps=0) or `steps` steps of one."""
    from charjax import runner
    from charjax.config import Config

    cfg = Config(epochs=1, temperatures=())
    if steps:  # cut the corpus so that one epoch is about `steps` batches
        cfg = cfg.replace(max_chars=steps * cfg.batch_size * cfg.step + cfg.maxlen + 1)
    runner.train_run(cfg, directory, log=lambda *a: None)
    run = "1 full epoch" if not steps else f"1 epoch of {steps} steps"
    print(json.dumps({"run": run}))


def _child_keras(steps: int) -> None:
    """The original recipe in Keras 3 (JAX backend): windows/s over `steps` train_on_batch calls."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np

    cfg, corpus, _, starts = _corpus()
    vocab = corpus.vocab.size
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
    starts = np.asarray(starts)
    rng = np.random.default_rng(0)

    def batch():
        s = rng.choice(starts, cfg.batch_size)
        x = corpus.ids[s[:, None] + np.arange(cfg.maxlen)]
        return eye[x], eye[corpus.ids[s + cfg.maxlen]]

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
    rate = steps * cfg.batch_size / statistics.median(times)
    print(
        json.dumps(
            {
                "keras_windows_per_s": rate,
                "keras_compile_s": compile_s,
                "keras_version": keras.__version__,
            }
        )
    )


def environment() -> dict:
    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
        "jax_devices": len(jax.devices()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="charjax-bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a < 60 s version with fewer steps")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--baseline", choices=("keras",), help="also time Keras 3 (JAX backend)")
    p.add_argument("--child-train", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-keras", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_keras:  # plain JAX set-up, as a Keras user has it
        _child_keras(args.child_keras)
        return 0
    parallel.request_cpu_devices()
    parallel.tune_host_malloc()
    if args.child_train:
        _child_train(int(args.child_train[0]), args.child_train[1])
        return 0

    steps, repeats = (60, 3) if args.quick else (300, 3)
    results = environment()
    results.update(bench_train(steps, repeats))
    print(
        f"train: {results['train_windows_per_s']:,.0f} windows/s "
        f"({results['train_s_per_epoch']:.1f} s/epoch) on {results['devices']} device(s), "
        f"median of {repeats} x {results['train_steps_per_repeat']} steps; "
        f"compile {results['compile_s']:.2f} s",
        flush=True,
    )
    results.update(bench_sample(repeats=5))
    for name, r in results["sample_ms"].items():
        print(
            f"sample 400 chars, {name}: {r['ms']:.1f} ms (compile {r['compile_s']:.2f} s)",
            flush=True,
        )
    results.update(bench_memory(40 if args.quick else 0))
    print(
        f"peak RSS, full-corpus training ({results['peak_rss_run']}): "
        f"{results['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    if args.baseline == "keras":
        # The child gets JAX's default device setup, as a plain Keras user would.
        flags = " ".join(
            f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(parallel._FLAG)
        )
        keras = _child(["--child-keras", str(steps)], env={"XLA_FLAGS": flags})
        results.update({k: v for k, v in keras.items() if k.startswith("keras")})
        ratio = results["train_windows_per_s"] / keras["keras_windows_per_s"]
        results["speedup_vs_keras"] = ratio
        print(
            f"keras 3 (jax backend): {keras['keras_windows_per_s']:,.0f} windows/s; "
            f"charjax is {ratio:.2f}x",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
