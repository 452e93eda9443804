"""Step-based intervals for long epochs: which of log, evaluate and save fall due after a chunk
(`--log-every`, `--eval-every`, `--save-every`, counted in optimizer steps), and the training
loss since the last step record. Pure bookkeeping: the runner does the work.

Checks happen after each jitted chunk, so an interval of N steps fires at the first chunk
boundary at or after each multiple of N (with N = 3 and chunks of 2 steps: after steps 4, 6,
10, 12, ...). A step record's means cover the steps since the last record of the same epoch
(or since the epoch's start, or the position a resumed run started from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from charjax.config import Config
from charjax.epoch import Position

LOG, EVAL, SAVE = "log", "eval", "save"


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` (> 0) lies in (before, after]; `every` 0 is never."""
    return every > 0 and after // every > before // every


@dataclass
class Ticks:
    """Tracks the optimizer step and the epoch's running sums between step records."""

    cfg: Config
    step: int  # optimizer steps taken so far in the run
    since: Position = field(default_factory=Position)  # the epoch's position at the last record

    def due(self, step: int) -> set[str]:
        """The actions due now that the run has reached `step` (and remember it)."""
        every = {LOG: self.cfg.log_every, EVAL: self.cfg.eval_every, SAVE: self.cfg.save_every}
        due = {name for name, n in every.items() if crossed(n, self.step, step)}
        self.step = step
        return due

    def record(self, epoch: int, position: Position) -> dict:
        """A step record: the epoch, the step, and each step metric's mean per window since the
        last record (in the same epoch; the epoch's start otherwise)."""
        windows = position.windows - self.since.windows
        means = {
            name: (total - self.since.sums.get(name, 0.0)) / max(windows, 1)
            for name, total in position.sums.items()
        }
        self.since = position
        return {"epoch": epoch, "step": self.step, **means}
