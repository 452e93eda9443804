"""What a training run shows and records: a live progress bar, epoch lines, metrics.jsonl.

The progress bar (rich) appears only on a terminal; elsewhere, or with `--quiet`, each epoch
is one plain line. `metrics.jsonl` in the checkpoint directory gets one JSON object per epoch and
is only ever appended to.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"


def read_metrics(directory: str | Path) -> list[dict]:
    """The epochs recorded in `directory/metrics.jsonl`, the last record of each epoch winning."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def append_metrics(directory: str | Path, record: dict) -> None:
    """Append one JSON line; a line left unfinished by a crash is closed first, not joined."""
    path = Path(directory) / METRICS_FILE
    with open(path, "a+b") as f:
        f.seek(0, 2)
        if f.tell() > 0:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


class Reporter:
    """Prints a run's progress; `log` gets every plain line (stdout by default)."""

    def __init__(self, *, progress: bool | None = None, log: Callable[[str], None] | None = None):
        self.log = log or (lambda line: print(line, flush=True))
        if progress is None:
            progress = log is None and sys.stdout.isatty()
        self._progress = None
        if progress:
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "batches · loss {task.fields[loss]:.4f} · {task.fields[rate]:,.0f} windows/s"
                ),
                TimeRemainingColumn(),
                console=Console(),
                transient=True,
            )
        self._task = None
        self._windows_per_chunk = 0

    def close(self) -> None:
        """Stop a live progress bar (restores the terminal after an interruption)."""
        if self._progress is not None:
            self._progress.stop()

    def epoch_started(self, epoch: int, epochs: int) -> None:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                "", total=None, epoch=f"{epoch}/{epochs}", loss=float("nan"), rate=0.0
            )

    def chunk_done(self, done: int, total: int, windows: int, loss: float, seconds: float) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=done,
                total=total,
                loss=loss,
                rate=windows / max(seconds, 1e-9),
            )

    def epoch_finished(self, metrics: dict | None, epochs: int) -> None:
        """Close the progress bar; print the epoch's line and samples (None: epoch cut short)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress.remove_task(self._task)
        if metrics is None:
            return
        val = ""
        if "val_loss" in metrics:
            val = f"  val {metrics['val_loss']:.4f} nats ({metrics['val_bits']:.3f} bits/char)"
        self.log(
            f"epoch {metrics['epoch']}/{epochs}  loss {metrics['loss']:.4f}{val}  "
            f"{metrics['seconds']:.1f} s  {metrics['windows_per_s']:,.0f} windows/s"
        )
        shown = metrics.get("samples")
        if shown:
            self.log(f'----- Generating with seed: "{shown["seed"]}"')
            for t, text in shown["texts"].items():
                self.log(f"----- temperature: {t}\n{shown['seed']}{text}")
