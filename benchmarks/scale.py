"""Big corpora: start-up time and peak memory of `charjax-train` on Nietzsche repeated to N
chars (`python scripts/bench.py --corpus-chars N,...`).

Each size is a real training run in a child process, with the default recipe, one step record
per chunk (`--log-every 1`) and a mid-epoch save (`--save-every`). Measured: the seconds from
launch to the first chunk of optimizer steps (its record in metrics.jsonl), to the first
evaluation of the held-out slice, and to the first mid-epoch checkpoint; then the child is
killed (an epoch of a big corpus takes hours) and its peak RSS read from the kernel.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.child import high_water_kib, wait
from charjax import corpus
from charjax.cli import train_command

SAVE_EVERY = 30  # steps between the mid-epoch saves of a measured run


def repeated_text(path: Path, chars: int) -> Path:
    """Write Nietzsche repeated (and cut) to `chars` chars into `path` (built once)."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    text = corpus.read_text(corpus.resolve_corpus(corpus.NIETZSCHE), lower=False)
    with open(path, "w", encoding="utf-8") as f:
        left = chars
        while left > 0:
            f.write(text[:left])
            left -= min(left, len(text))
    return path


def _first(predicate, process: subprocess.Popen, t0: float, limit: float) -> float:
    while not predicate():
        if process.poll() is not None:
            raise SystemExit(f"charjax-train ended early:\n{process.stderr.read()[-2000:]}")
        if time.perf_counter() - t0 > limit:
            raise SystemExit("gave up waiting for charjax-train")
        time.sleep(0.05)
    return time.perf_counter() - t0


def measure(chars: int, workdir: Path, limit: float = 1800.0) -> dict:
    """One size: {chars, startup_s, first_eval_s, first_save_s, peak_rss_mb}."""
    text = repeated_text(workdir / f"nietzsche-{chars}.txt", chars)
    run_dir = workdir / f"run-{chars}"
    command = train_command(
        ["--text", text, "--epochs", 1, "--temperatures", "", "--quiet", "--log-every", 1,
         "--eval-every", SAVE_EVERY, "--save-every", SAVE_EVERY, "--checkpoint-dir", run_dir]
    )  # fmt: skip
    t0 = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"

    def records() -> str:
        return metrics.read_text() if metrics.is_file() else ""

    def saved() -> bool:
        partial = run_dir / "partial"
        return partial.is_dir() and any(p.name.isdigit() for p in partial.iterdir())

    try:
        startup = _first(lambda: '"step"' in records(), process, t0, limit)
        evaluated = _first(lambda: '"val_loss"' in records(), process, t0, limit)
        first_save = _first(saved, process, t0, limit)
    finally:
        running_kib = high_water_kib(process.pid)  # before the kill: a killed process' is gone
        process.send_signal(signal.SIGKILL)
        peak_mb = max(wait(process), running_kib / 1024)
    return {
        "chars": chars,
        "startup_s": round(startup, 2),
        "first_eval_s": round(evaluated, 2),
        "first_save_s": round(first_save, 2),
        "peak_rss_mb": round(peak_mb),
    }


def run(sizes: list[int], workdir: str | None = None) -> list[dict]:
    """Measure each size, printing a line as it goes; corpora are kept in `workdir` if given."""
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(workdir or tmp)
        where.mkdir(parents=True, exist_ok=True)
        results = []
        for chars in sizes:
            result = measure(chars, where)
            print(
                f"{chars:>13,} chars: first chunk of steps after {result['startup_s']:.1f} s, "
                f"first held-out slice {result['first_eval_s']:.1f} s, first mid-epoch save "
                f"{result['first_save_s']:.1f} s; peak RSS {result['peak_rss_mb']:,} MB",
                flush=True,
            )
            results.append(result)
        return results
