"""In-process timings of the default recipe: training windows/s (compile apart) and sampling
latency, each a median of repeats; and a preset's training chars/s on one and on all devices.
Every figure comes from `timing`; training runs through the training loop itself (`training`)."""

from __future__ import annotations

import itertools

import jax

from benchmarks.timing import time_calls, time_rounds
from charjax import corpus, epoch, model, objective, parallel, run, sample, step
from charjax.config import PRESETS, Config


def default_corpus():
    """(the default config, the Nietzsche corpus)."""
    cfg = Config()
    return cfg, corpus.load(cfg)


def run_context(cfg: Config, split: int):
    """(keys, per-step context) of a run of `cfg` with `split` training ids: timed training
    draws the dropout and weight-drop masks that a run draws."""
    keys = run.run_keys(cfg.seed)
    return keys, run.step_context(cfg, keys.dropout, objective.of(cfg).windows(split))


def training(cfg: Config, ids, split: int, state, data_key, mesh=None, **kw):
    """Training of `cfg` on ids [0, split), epoch after epoch, as a run trains (`epoch.iterate`,
    given `kw`: host slicing, transfer, jitted chunk): yields (state, windows trained) after each
    chunk."""
    for number in itertools.count(1):
        before = 0
        for done in epoch.iterate(state, ids, split, data_key, number, cfg, mesh, **kw):
            yield done.state, done.position.windows - before
            before = done.position.windows
        state = done.state


def windows_of(chunk) -> int:
    """The work of one chunk of `training`: the windows it trained."""
    return chunk[1]


def bench_train(steps: int, repeats: int) -> dict:
    """Windows/s of the default recipe over `steps` optimizer steps, median of `repeats`,
    on the whole corpus with all of this process's devices; compile time apart."""
    cfg, text = default_corpus()
    mesh = parallel.data_mesh()
    calls = max(1, steps // cfg.steps_per_call)
    state = step.init_state(jax.random.key(0), text.vocab.size, cfg)
    split = len(text.ids)
    chunks = training(cfg, text.ids, split, state, jax.random.key(1), mesh)
    timed = time_calls(lambda: next(chunks), repeats, calls=calls, work=windows_of)
    return {
        "train_windows_per_s": timed.rate,
        "train_windows_per_s_repeats": timed.rates,
        "train_s_per_epoch": objective.of(cfg).windows(split) / timed.rate,
        "train_steps_per_repeat": calls * cfg.steps_per_call,
        "compile_s": timed.compile_s,
        "devices": mesh.size,
    }


def bench_sample(repeats: int) -> dict:
    """Milliseconds for 400 chars after compile: window/stateful x 1/4 temperatures per call,
    a new key each call."""
    cfg, text = default_corpus()
    spec = model.Spec.of(cfg, text.vocab.size)
    net = model.Model(spec, spec.init(jax.random.key(0)))
    prime = text.ids[: cfg.maxlen]
    out = {}
    for mode in sample.MODES:
        for temps in ([0.5], [0.2, 0.5, 1.0, 1.2]):
            keys = itertools.count()

            def call(mode=mode, temps=temps, keys=keys):
                key = jax.random.key(next(keys))
                return sample.generate(
                    net,
                    prime,
                    key,
                    sample.Settings(temps, length=400),
                    mode=mode,
                    maxlen=cfg.maxlen,
                )

            timed = time_calls(call, repeats)
            out[f"{mode}_{len(temps)}temp"] = {
                "ms": 1000 * timed.median_s,
                "compile_s": timed.compile_s,
            }
    return {"sample_ms": out}


def bench_preset(name: str, steps: int, repeats: int) -> dict:
    """Chars/s of preset `name`'s training (its dropout and weight-drop masks drawn as in a
    run) on 1 and on all of this process's devices, alternating, medians of `repeats` x
    `steps` steps, compile apart: a lead for whether one device or several suit it on this
    host ($CHARJAX_CPU_DEVICES sets a run's count; a process of one device can differ)."""
    cfg = Config(**PRESETS[name])
    variants = {str(n): (cfg, n) for n in sorted({1, len(jax.devices())})}
    return {
        "preset": name,
        "preset_chars_per_s": _chars_per_s(variants, steps, repeats),
        "preset_steps_per_repeat": max(1, steps // cfg.steps_per_call) * cfg.steps_per_call,
    }


# --cells: each cell in --preset quality, and the LSTM-shaped ones through autodiff (what the
# fast scan buys)
CELL_VARIANTS = {
    "lstm": {"cell": "lstm"},
    "lstm, autodiff": {"cell": "lstm", "lstm_kernel": "autodiff"},
    "lnlstm": {"cell": "lnlstm"},
    "lnlstm, autodiff": {"cell": "lnlstm", "lstm_kernel": "autodiff"},
    "mogrifier": {"cell": "mogrifier"},
    "mogrifier, rank 32": {"cell": "mogrifier", "mogrify_rank": 32},
}


def bench_cells(steps: int, repeats: int) -> dict:
    """Training chars/s of `--preset quality` with each cell (`CELL_VARIANTS`) on all of this
    process's devices, in rounds, medians of `repeats` x `steps` steps, compile apart."""
    cfg = Config(**PRESETS["quality"])
    variants = {name: (cfg.replace(**flags), len(jax.devices()))
                for name, flags in CELL_VARIANTS.items()}  # fmt: skip
    return {
        "cells_chars_per_s": _chars_per_s(variants, steps, repeats),
        "cells_steps_per_repeat": max(1, steps // cfg.steps_per_call) * cfg.steps_per_call,
    }


def _chars_per_s(variants: dict, steps: int, repeats: int) -> dict:
    """{name: training chars/s} of each (config, device count) in `variants` (one corpus,
    the same for all), timed in rounds: medians of `repeats` x `steps` steps, compile apart."""
    loops, per_window, calls = {}, {}, {}
    for name, (cfg, devices) in variants.items():
        text = corpus.load(cfg)
        split = corpus.split(text, cfg)
        keys, context = run_context(cfg, split)
        state = step.init_state(keys.init, text.vocab.size, cfg)
        mesh = parallel.data_mesh(jax.devices()[:devices])
        loops[name] = training(cfg, text.ids, split, state, keys.data, mesh, context=context)
        per_window[name] = objective.of(cfg).chars_per_window
        calls = max(1, steps // cfg.steps_per_call)
    timings = time_rounds(
        {name: (lambda loop=loop, name=name: (name, next(loop))) for name, loop in loops.items()},
        repeats,
        calls=calls,
        sync=lambda result: jax.block_until_ready(result[1]),
        work=lambda result: windows_of(result[1]) * per_window[result[0]],
    )
    return {name: t.rate for name, t in timings.items()}
