"""What a person sees of a training run: the opening line, a live progress bar, epoch lines and
the per-epoch samples.

The progress bar (rich) appears only on a terminal; elsewhere, or with `--quiet`, each epoch
is one plain line. Every metric the train step returns is shown in both, after the loss.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

# Keys of an epoch's record that the run adds; all others come from the train step's metrics.
RUN_KEYS = (
    "epoch",
    "seconds",
    "windows_per_s",
    "chars_per_s",
    "lr_scale",
    "steps",
    "val_loss",
    "val_bits",
    "samples",
    "resumed_after",
)


def throughput(every_position: bool, maxlen: int) -> tuple[str, int]:
    """(unit, units per window) of a run's throughput: windows for the original objective,
    predicted chars for "sequence" (maxlen a window): one number for the bar, the epoch line
    and metrics.jsonl (`<unit>_per_s`)."""
    return ("chars", maxlen) if every_position else ("windows", 1)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_metrics(values: dict) -> str:
    """'loss 1.2345' (and any other step metric), as the bar and the epoch line show them."""
    return "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k not in RUN_KEYS)


class Reporter:
    """Prints a run's progress; `log` gets every plain line (stdout by default)."""

    def __init__(
        self,
        *,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        console: Console | None = None,
    ):
        self.log = log or (lambda line: print(line, flush=True))
        # remarks beside the run's record (stderr, so that a piped log stays the record)
        self.note = log or (lambda line: print(line, file=sys.stderr, flush=True))
        if progress is None:
            progress = log is None and sys.stdout.isatty()
        self._progress = None
        if progress:
            console = console or Console()
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                _Bar(console),
                _Figures(console),
                console=console,
                transient=True,
            )
        self._task = None
        self.unit, self._per_window = "windows", 1
        self._epoch, self._epochs, self._epoch_began, self._walls = 0, 0, 0.0, []

    def close(self) -> None:
        """Stop a live progress bar (restores the terminal after an interruption)."""
        if self._progress is not None:
            self._progress.stop()

    def started(self, run, devices: int, platform: str, directory) -> None:
        self.unit, self._per_window = throughput(run.objective.every_position, run.cfg.maxlen)
        held = f", {len(run.held_out):,} held out" if run.held_out is not None else ""
        self.log(
            f"corpus: {len(run.corpus.ids):,} chars{held}, {run.corpus.vocab.size} distinct, "
            f"{run.windows:,} windows; epochs {run.epoch}..{run.cfg.epochs} on {devices} "
            f"{platform} device(s); checkpoints in {directory}"
        )

        empty = run.corpus.empty
        if empty:
            more = f", ... and {len(empty) - 3} more" if len(empty) > 3 else ""
            names = ", ".join(empty[:3]) + more
            self.note(f"skipped {len(empty)} empty file{'s' if len(empty) > 1 else ''} ({names})")
        left_out = run.corpus.left_out
        if left_out:
            chars = " ".join(ch if ch.isprintable() and not ch.isspace() else _escaped(ch)
                             for ch in left_out)  # fmt: skip
            self.log(
                f"--max-chars {run.cfg.max_chars:,} leaves out {len(left_out)} of the file's "
                f"distinct chars, which the model will not know: {chars}"
            )

    def nothing_to_train(self, run, directory) -> None:
        if run.cfg.schedule != "constant":  # its schedule decays over exactly these epochs
            further = f"its {run.cfg.schedule} schedule ends there, so train longer in a new run "
            further += "in another --checkpoint-dir"
        else:
            further = (
                f"to train further, pass a larger one, e.g. charjax-train --resume --epochs "
                f"{run.cfg.epochs + 10} --checkpoint-dir {directory}"
            )
        self.log(
            f"nothing to train: the run in {directory} has done all its --epochs "
            f"{run.cfg.epochs}; {further}"
        )

    def finished(self, records: list[dict], directory) -> None:
        """The closing line: where the model is, its held-out loss, how to sample from it."""
        if not records:
            return
        last = records[-1]
        held = [r for r in records if "val_loss" in r]
        if held:
            best = min(held, key=lambda r: r["val_loss"])
            scores = (
                f"held-out loss {last['val_loss']:.4f} nats/char (best {best['val_loss']:.4f}, "
                f"epoch {best['epoch']})"
            )
        else:
            scores = f"training loss {last['loss']:.4f} nats/char"
        self.log(
            f"done: epoch {last['epoch']} in {directory}, {scores}. Sample from it with: "
            f"charjax-sample --checkpoint-dir {directory}"
        )

    def epoch_started(self, epoch: int, epochs: int) -> None:
        now = time.perf_counter()
        if self._epoch_began and epoch == self._epoch + 1:  # the last epoch's whole wall time
            self._walls.append(now - self._epoch_began)
        self._epoch, self._epochs, self._epoch_began = epoch, epochs, now
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                "", total=None, epoch=f"{epoch}/{epochs}", metrics="loss nan", rate=0.0,
                unit=self.unit, left="-:--:--", run_left="-:--:--",
            )  # fmt: skip

    @property
    def rate_key(self) -> str:
        """The throughput's key in metrics.jsonl: `windows_per_s` or `chars_per_s`."""
        return f"{self.unit}_per_s"

    def rate(self, windows: int, seconds: float) -> float:
        """Throughput in this run's unit (`throughput`), for the bar and the epoch's record."""
        return windows * self._per_window / max(seconds, 1e-9)

    def epoch_left(self, fraction: float) -> float:
        """Seconds left in this epoch, `fraction` of it done, at its pace so far."""
        elapsed = time.perf_counter() - self._epoch_began
        return elapsed / max(fraction, 1e-9) - elapsed

    def run_left(self, fraction: float) -> float:
        """Seconds left in the run, `fraction` of this epoch done: its rest, and the epochs
        after it at the wall time epochs took so far (validation, samples and saves included)."""
        elapsed = time.perf_counter() - self._epoch_began
        this_epoch = elapsed / max(fraction, 1e-9)
        per_epoch = sum(self._walls) / len(self._walls) if self._walls else this_epoch
        return this_epoch - elapsed + (self._epochs - self._epoch) * per_epoch

    def chunk_done(self, done: int, total: int, windows: int, means: dict, seconds: float):
        """`done` of `total` batches; `windows` trained in `seconds` (the rate shown, the same
        as the epoch line's); the epoch's metric `means` so far."""
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=done,
                total=total,
                metrics=step_metrics(means).replace("  ", " · "),
                rate=self.rate(windows, seconds),
                left=_clock(self.epoch_left(done / max(total, 1))),
                run_left=_clock(self.run_left(done / max(total, 1))),
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
        unit = "chars" if "chars_per_s" in metrics else "windows"
        resumed = ""
        if metrics.get("resumed_after"):  # the time and rate are of this process's part
            resumed = f" (the part after the resume at {metrics['resumed_after']:,} windows)"
        self.log(
            f"epoch {metrics['epoch']}/{epochs}  {step_metrics(metrics)}{val}  "
            f"{metrics['seconds']:.1f} s  {metrics[unit + '_per_s']:,.0f} {unit}/s{resumed}"
        )
        shown = metrics.get("samples")
        if shown:
            self.log(f'----- Generating with seed: "{shown["seed"]}"')
            for t, text in shown["texts"].items():
                self.log(f"----- temperature: {float(t)}\n{shown['seed']}{text}")


def _bar_width(columns: int) -> int:
    """The bar's length on a console of `columns`: shorter on narrow ones, for the figures."""
    return 40 if columns >= 150 else 20 if columns >= 100 else 10


class _Bar(BarColumn):
    """The progress bar, as long as the console's width leaves room for (`_bar_width`)."""

    def __init__(self, console: Console):
        super().__init__(bar_width=_bar_width(console.width))
        self._console = console

    def render(self, task):
        self.bar_width = _bar_width(self._console.width)
        return super().render(task)


class _Figures(ProgressColumn):
    """The bar's figures in one column that fits the console's width: batches, step metrics,
    rate, the epoch's and the run's time left; the least needed are left out first (the
    metrics after the loss, then the run's time left, the loss, the rate), never the batch
    count and the epoch's time left. At 80 columns all but the run's time left fit."""

    def __init__(self, console: Console):
        super().__init__()
        self._console = console

    def render(self, task) -> Text:
        f = task.fields
        batches = f"{task.completed:,.0f}/{task.total:,.0f}" if task.total else "?"
        metrics = f["metrics"].split(" · ")
        pieces = [  # (text, rank): the highest rank is left out first
            (batches, 0),
            *((m, 3 if i == 0 else 6) for i, m in enumerate(metrics)),
            (f"{f['rate']:,.0f} {f['unit']}/s", 2),
            (f"{f['left']} left", 1),
            (f"run {f['run_left']} left", 4),
        ]
        # the epoch's column, the bar and the spaces between the three columns
        room = self._console.width - len(f"epoch {f['epoch']}") - _bar_width(self._console.width)
        room -= 3
        while len(" · ".join(text for text, _ in pieces)) > room and len(pieces) > 2:
            pieces.remove(max(pieces, key=lambda piece: piece[1]))
        return Text(" · ".join(text for text, _ in pieces))


def _escaped(ch: str) -> str:
    """A whitespace or control char as it is written in code: \\n, \\t, \\u00a0."""
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "' '"}.get(ch, f"\\u{ord(ch):04x}")
