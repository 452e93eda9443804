"""The prepared device check (`python scripts/bench.py --device-check DIR`,
`scripts/gpu_check.sh`): one call on a machine with an accelerator measures charjax there and
writes every figure to DIR/device_check.json.

In order, each part timed and recorded even if a later one fails: versions and device; the
tests that matter on an accelerator (Keras parity, determinism, resume, sampling, the fused
kernels, the cells) run against it; the default recipe's compile time, a whole epoch's wall
time and windows/s, in float32 (at the platform's `--unroll`, at 1, 20 and 60, in calls of 100
steps, with the Pallas kernels) and bfloat16; sampling latency (1 and 4 temperatures x 400 chars,
window and stateful); the `long-streams` preset's chars/s; the fused kernel's variants; peak
device memory; and PyTorch `nn.LSTM` (cuDNN on a GPU) on the same batches when torch is
importable. `--quick` cuts every part to a few steps: that is how the suite runs it on CPU, so
the check cannot rot.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks import measure
from benchmarks.environment import environment
from benchmarks.timing import time_calls
from charjax.config import PRESETS, Config
from charjax.errors import CharjaxError

ROOT = Path(__file__).resolve().parents[1]  # the repository, whose tests run on the device
# The tests that must hold on the device (run there as they are, on its default backend).
DEVICE_TESTS = [
    "tests/test_keras_parity.py",
    "tests/test_epoch.py::test_same_seed_gives_bit_identical_params",
    "tests/test_runner.py::test_resume_is_bit_identical_to_an_uninterrupted_run",
    "tests/test_sample.py",
    "tests/test_scans.py",
    "tests/test_cells.py",
]


def run_tests(root: Path, out: Path, timeout: float) -> dict:
    """The device tests in a child pytest (4 workers where pytest-xdist is installed, the device
    memory shared) -> {returncode, summary, failed: [lines], seconds}; the whole output goes to
    out/tests.log."""
    import importlib.util
    import os

    workers = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    t0 = time.perf_counter()
    # addopts' -n 2 dropped (workers only where xdist is); --all: slow tests among them run too
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "--tb=short", "-p", "no:cacheprovider",
         "-o", "addopts=", "--all", *workers, *DEVICE_TESTS],
        cwd=root, capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip
    (out / "tests.log").write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    return {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else done.stderr[-500:],
        "failed": [line for line in lines if line.startswith(("FAILED", "ERROR"))],
        "seconds": time.perf_counter() - t0,
    }


def train_epoch(cfg: Config, steps: int | None) -> dict:
    """Compile time, then a whole epoch (or its first `steps` steps) of `cfg` on Nietzsche:
    wall time and throughput, from the training loop itself (`measure.training`, with a run's
    per-step context: its dropout and weight-drop masks are drawn as in training)."""
    from charjax import corpus, objective, step

    text = corpus.load(cfg)
    goal = objective.of(cfg)
    split = corpus.split(text, cfg)
    keys, context = measure.run_context(cfg, split)
    state = step.init_state(keys.init, text.vocab.size, cfg)
    chunks = measure.training(cfg, text.ids, split, state, keys.data, context=context)
    epoch_chunks = -(-goal.windows(split) // (cfg.batch_size * cfg.steps_per_call))
    wanted = min(epoch_chunks, -(-steps // cfg.steps_per_call)) if steps else epoch_chunks
    timed = time_calls(lambda: next(chunks), 1, calls=max(1, wanted - 1), work=measure.windows_of)
    rate = timed.rate
    return {
        "compile_and_first_chunk_s": timed.first_s,
        "windows": timed.work[0],
        "seconds": timed.seconds[0],
        "windows_per_s": rate,
        "chars_per_s": rate * goal.chars_per_window,
        "epoch_s": goal.windows(split) / rate if rate > 0 else None,
        "whole_epoch": not steps,
    }


def peak_memory() -> dict:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_limit")}


def torch_lstm(steps: int) -> dict:
    """PyTorch nn.LSTM(128) + Linear on the default recipe's batches (one-hot, batch 128, 60
    steps): windows/s, on CUDA when it has it."""
    try:
        import torch
    except ImportError:
        return {"torch": "not importable"}
    from charjax import batching, corpus

    cfg = Config()
    text = corpus.load(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vocab = text.vocab.size
    lstm = torch.nn.LSTM(vocab, cfg.hidden, batch_first=True).to(device)
    dense = torch.nn.Linear(cfg.hidden, vocab).to(device)
    params = [*lstm.parameters(), *dense.parameters()]
    opt = torch.optim.RMSprop(params, lr=cfg.learning_rate, alpha=0.9, eps=1e-7)
    starts = batching.window_starts(len(text.ids), cfg.maxlen, cfg.step)[: steps * cfg.batch_size]
    eye = torch.eye(vocab, device=device)
    ids = torch.as_tensor(text.ids.astype("int64"), device=device)

    def one(i):
        s = torch.as_tensor(starts[i * cfg.batch_size : (i + 1) * cfg.batch_size], device=device)
        x = eye[ids[s[:, None] + torch.arange(cfg.maxlen, device=device)]]
        out, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(dense(out[:, -1]), ids[s + cfg.maxlen])
        opt.zero_grad()
        loss.backward()
        opt.step()

    index = itertools.count()
    timed = time_calls(
        lambda: one(next(index)),
        1,
        calls=steps - 1,
        sync=lambda _: torch.cuda.synchronize() if device == "cuda" else None,
        work=lambda _: cfg.batch_size,
    )
    return {"torch": torch.__version__, "device": device, "windows_per_s": timed.rate}


def parts(out: Path, quick: bool, tests: bool) -> dict:
    """{name: the part's function -> its record}, in the order they run."""
    steps = 20 if quick else None  # None: whole epochs

    def epoch_of(**values):
        return lambda: train_epoch(Config(**values), steps)

    return {
        "environment": environment,
        "tests": lambda: run_tests(ROOT, out, 300) if tests else None,
        "default_float32": epoch_of(),  # the platform's --unroll
        "default_float32_unroll_1": epoch_of(unroll=1),
        "default_float32_unroll_20": epoch_of(unroll=20),
        "default_float32_unroll_60": epoch_of(unroll=60),
        "default_bfloat16": epoch_of(dtype="bfloat16"),
        # longer jitted calls: fewer host syncs per epoch
        "default_float32_calls_of_100": epoch_of(steps_per_call=100),
        # the best recipe's cell through the fast scan, and through autodiff
        "quality_lnlstm": lambda: train_epoch(Config(**PRESETS["quality"]), 10 if quick else 200),
        "quality_lnlstm_autodiff": lambda: train_epoch(
            Config(**PRESETS["quality"], lstm_kernel="autodiff"), 10 if quick else 200
        ),
        "sampling": lambda: measure.bench_sample(2 if quick else 5),
        "long_streams": lambda: train_epoch(
            Config(**PRESETS["long-streams"]), 10 if quick else 200
        ),
        "peak_device_memory": peak_memory,
        "pytorch": lambda: torch_lstm(5 if quick else 300),
    }


def check(out: Path, quick: bool, tests: bool, only=None) -> dict:
    """Run every part (or those named in `only`), each into the result and the JSON file as it
    ends (an error is recorded, not raised)."""
    todo = parts(out, quick, tests)
    unknown = sorted(set(only or ()) - set(todo))
    if unknown:
        raise CharjaxError(
            f"--parts: no part named {', '.join(unknown)}; the parts are {', '.join(todo)}"
        )
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for name, part in todo.items():
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            result[name] = part()
        except Exception as e:  # recorded: the other parts still run
            result[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        print(f"{name} ({time.perf_counter() - t0:.1f} s): {json.dumps(result[name])[:300]}",
              flush=True)  # fmt: skip
        (out / "device_check.json").write_text(json.dumps(result, indent=2, default=str))
    return result
