"""What every peer shares and none of them times: the recipe's numbers, the corpus as char ids
(charjax's loader: the same lower-cased Nietzsche text), random batches of windows, the prime
of the sampling loop, and the JSON line a peer reports."""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

MAXLEN, STEP, HIDDEN, BATCH = 60, 3, 128, 128
LEARNING_RATE, RHO, EPSILON = 0.01, 0.9, 1e-7
SAMPLE_CHARS, TEMPERATURE = 400, 0.5
WARMUP_STEPS = 5  # steps before the timed ones: compiles, first allocations


def arguments(prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps")
    return p.parse_args()


def corpus() -> tuple[np.ndarray, int]:
    """(the Nietzsche text as int32 ids, vocabulary size)."""
    from charjax import corpus as corpora
    from charjax.config import Config

    text = corpora.load(Config())
    return np.asarray(text.ids, np.int32), text.vocab.size


def batches(ids: np.ndarray, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` batches of BATCH random windows: (ids [BATCH, MAXLEN], next ids [BATCH])."""
    starts = np.arange(0, len(ids) - MAXLEN, STEP)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        s = rng.choice(starts, BATCH)
        out.append((ids[s[:, None] + np.arange(MAXLEN)], ids[s + MAXLEN]))
    return out


def prime(ids: np.ndarray) -> np.ndarray:
    return ids[:MAXLEN]


def report(*, train_s: float, steps: int, first_s: float, sample_s: float, train: str,
           sample: str, packages: dict, windows: int | None = None) -> None:  # fmt: skip
    """Print the peer's one JSON line: training windows/s over the timed steps (`windows`
    trained, by default `steps` full batches), the seconds of the warm-up steps (compile
    included), one 400-char sample's milliseconds, and what each does."""
    print(json.dumps({
        "train_windows_per_s": (windows or steps * BATCH) / train_s,
        "steps": steps,
        "warmup_s": first_s,
        "sample_ms": 1000 * sample_s,
        "train_method": train,
        "sample_method": sample,
        "versions": {"python": platform.python_version(), **packages},
    }), flush=True)  # fmt: skip


def clock() -> float:
    return time.perf_counter()
