"""In-process timings of the default recipe: training windows/s (compile apart) and sampling
latency, each a median of repeats."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from charjax import corpus, model, objective, parallel, sample, step
from charjax.config import Config


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def default_corpus():
    """(the default config, the Nietzsche corpus, its ids and all window starts on device)."""
    cfg = Config()
    text = corpus.load(cfg)
    starts = objective.of(cfg).starts(len(text.ids))
    return cfg, text, jnp.asarray(text.ids), jnp.asarray(starts)


def bench_train(steps: int, repeats: int) -> dict:
    """Windows/s of the default recipe over `steps` optimizer steps, median of `repeats`."""
    cfg, text, ids, starts = default_corpus()
    mesh = parallel.data_mesh()
    chunks_per_repeat = max(1, steps // cfg.steps_per_call)
    state = step.init_state(jax.random.key(0), text.vocab.size, cfg)
    plan_starts, plan_weights = objective.of(cfg).plan(
        jax.random.key(1), 1, starts, cfg.steps_per_call, mesh
    )
    state, ids = parallel.put((state, ids), parallel.replicated(mesh))
    needed = 2 + repeats * chunks_per_repeat
    if needed > plan_starts.shape[0]:
        raise SystemExit(f"at most {plan_starts.shape[0] * cfg.steps_per_call} steps fit an epoch")
    chunk = iter(range(needed))

    def run_chunks(n):
        nonlocal state
        for _ in range(n):
            state, metrics = step.train_chunk(
                state, ids, plan_starts, plan_weights, next(chunk), step.NO_CONTEXT, cfg, mesh
            )
            jax.block_until_ready(metrics)

    first, _ = median_time(lambda: run_chunks(1), 1)
    warm, _ = median_time(lambda: run_chunks(1), 1)
    per_repeat, times = median_time(lambda: run_chunks(chunks_per_repeat), repeats)
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
    cfg, text, _, _ = default_corpus()
    params = model.init_params(jax.random.key(0), text.vocab.size, cfg.hidden)
    prime = text.ids[: cfg.maxlen]
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

            compile_s, _ = median_time(call, 1)
            median, _ = median_time(call, repeats)
            out[f"{mode}_{len(temps)}temp"] = {"ms": 1000 * median, "compile_s": compile_s}
    return {"sample_ms": out}
