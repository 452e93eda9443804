"""In-process timings of the default recipe: training windows/s (compile apart) and sampling
latency, each a median of repeats; and a preset's training chars/s on one and on all devices."""

from __future__ import annotations

import itertools
import statistics
import time

import jax

from charjax import corpus, epoch, model, objective, parallel, run, sample, step
from charjax.config import PRESETS, Config


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def default_corpus():
    """(the default config, the Nietzsche corpus)."""
    cfg = Config()
    return cfg, corpus.load(cfg)


def bench_train(steps: int, repeats: int) -> dict:
    """Windows/s of the default recipe over `steps` optimizer steps, median of `repeats`,
    through the training loop itself (`epoch.iterate`: host slicing, transfer, jitted chunk)."""
    cfg, text = default_corpus()
    mesh = parallel.data_mesh()
    chunks_per_repeat = max(1, steps // cfg.steps_per_call)
    state = step.init_state(jax.random.key(0), text.vocab.size, cfg)
    split = len(text.ids)
    windows = objective.of(cfg).windows(split)
    needed = 2 + repeats * chunks_per_repeat
    if needed * cfg.steps_per_call * cfg.batch_size > windows:
        raise SystemExit(f"at most {windows // cfg.batch_size} steps fit an epoch")
    chunks = epoch.iterate(state, text.ids, split, jax.random.key(1), 1, cfg, mesh)

    def run_chunks(n):
        for _ in range(n):
            done = next(chunks)
        jax.block_until_ready(done.state)

    first, _ = median_time(lambda: run_chunks(1), 1)
    warm, _ = median_time(lambda: run_chunks(1), 1)
    per_repeat, times = median_time(lambda: run_chunks(chunks_per_repeat), repeats)
    trained = chunks_per_repeat * cfg.steps_per_call * cfg.batch_size
    return {
        "train_windows_per_s": trained / per_repeat,
        "train_windows_per_s_repeats": [trained / t for t in times],
        "train_s_per_epoch": windows / (trained / per_repeat),
        "train_steps_per_repeat": chunks_per_repeat * cfg.steps_per_call,
        "compile_s": max(first - warm, 0.0),
        "devices": mesh.size,
    }


def bench_sample(repeats: int) -> dict:
    """Milliseconds for 400 chars after compile: window/stateful x 1/4 temperatures per call."""
    cfg, text = default_corpus()
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


def bench_preset(name: str, steps: int, repeats: int) -> dict:
    """Chars/s of preset `name`'s training (its dropout and weight-drop masks drawn as in a
    run) on 1 and on all of this process's devices, alternating, medians of `repeats` x
    `steps` steps, compile apart: a lead for whether one device or several suit it on this
    host ($CHARJAX_CPU_DEVICES sets a run's count; a process of one device can differ)."""
    cfg = Config(**PRESETS[name])
    text = corpus.load(cfg)
    split = corpus.split(text, cfg)
    keys, context = run_context(cfg, split)
    counts = sorted({1, len(jax.devices())})

    def chunks_on(mesh):  # epoch after epoch: (state, windows) of each chunk
        state = step.init_state(keys.init, text.vocab.size, cfg)
        for number in itertools.count(1):
            before = 0
            for done in epoch.iterate(state, text.ids, split, keys.data, number, cfg, mesh,
                                      context=context):  # fmt: skip
                yield done.state, done.position.windows - before
                before = done.position.windows
            state = done.state

    loops, rates = {}, {n: [] for n in counts}
    for n in counts:
        loops[n] = chunks_on(parallel.data_mesh(jax.devices()[:n]))
        jax.block_until_ready(next(loops[n])[0])  # compile
    chunks, per_window = max(1, steps // cfg.steps_per_call), objective.of(cfg).chars_per_window
    for _ in range(repeats):
        for n in counts:
            t0, windows = time.perf_counter(), 0
            for _ in range(chunks):
                state, trained = next(loops[n])
                windows += trained
            jax.block_until_ready(state)
            rates[n].append(windows * per_window / (time.perf_counter() - t0))
    return {
        "preset": name,
        "preset_chars_per_s": {str(n): statistics.median(r) for n, r in rates.items()},
        "preset_steps_per_repeat": chunks * cfg.steps_per_call,
    }


def run_context(cfg: Config, split: int):
    """(keys, per-step context) of a run of `cfg` with `split` training ids: timed training
    draws the dropout and weight-drop masks that a run draws."""
    keys = run.run_keys(cfg.seed)
    return keys, run.step_context(cfg, keys.dropout, objective.of(cfg).windows(split))
