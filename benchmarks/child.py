"""Benchmarks that need a process of their own, so that they do not disturb the in-process
timings: a real training run for its peak memory, and the Keras 3 baseline (`keras_baseline`).
`run` starts one and reads the child's own peak RSS from the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charjax import parallel
from charjax.cli import train_command
from charjax.config import Config

ROOT = Path(__file__).resolve().parents[1]  # the repository: `python -m benchmarks...` runs here


def wait(process: subprocess.Popen, every: float = 0.01) -> float:
    """Reap `process` -> its peak RSS in MB, polled from its own /proc VmHWM (the kernel's
    ru_maxrss of a child counts the memory of the parent it was forked from)."""
    peak_kib = 0
    while True:
        pid, status = os.waitpid(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return peak_kib / 1024
        peak_kib = max(peak_kib, high_water_kib(process.pid))
        time.sleep(every)


def high_water_kib(pid: int) -> int:
    """The process' peak resident memory so far (VmHWM), 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next((line for line in f if line.startswith("VmHWM:")), "VmHWM: 0 kB")
    except OSError:
        return 0
    return int(line.split()[1])


def run(command: list[str], env: dict | None = None) -> tuple[str, float]:
    """Run `command` to its end in the repository -> (its stdout, its peak RSS in MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        peak_mb = wait(process)
        if process.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:]
            raise SystemExit(f"a benchmark's child process failed ({process.returncode}):\n{tail}")
        out.seek(0)
        return out.read(), peak_mb


def training_memory(steps: int, directory: str) -> dict:
    """Peak RSS of `charjax-train` on the full corpus: a whole epoch (steps=0) or one epoch
    cut to about `steps` batches -> {peak_rss_mb, peak_rss_run}."""
    cfg = Config()
    argv = ["--epochs", "1", "--temperatures", "", "--quiet", "--checkpoint-dir", directory]
    if steps:  # cut the corpus so that one epoch is about `steps` batches
        argv += ["--max-chars", steps * cfg.batch_size * cfg.step + cfg.maxlen + 1]
    _, peak_mb = run(train_command(argv))
    return {
        "peak_rss_mb": peak_mb,
        "peak_rss_run": "1 full epoch" if not steps else f"1 epoch of {steps} steps",
    }


def keras(steps: int) -> dict:
    """The original recipe in Keras 3 on its JAX backend, in a child process set up as a plain
    Keras user has it (JAX's default devices) -> its `keras_*` figures."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    plain = " ".join(f for f in flags if not f.startswith(parallel.DEVICE_COUNT_FLAG))
    command = [sys.executable, "-m", "benchmarks.keras_baseline", str(steps)]
    out, _ = run(command, env={"XLA_FLAGS": plain})
    return json.loads(out.strip().splitlines()[-1])
