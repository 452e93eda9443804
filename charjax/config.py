"""The one frozen configuration of a run; its defaults are the original Keras example's settings,
plus a 10 % held-out tail for validation (training sees the other 90 %) and the divergence
guard (which changes nothing unless an epoch's loss is non-finite or far above the best)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from charjax.errors import CharjaxError


@dataclass(frozen=True)
class Config:
    """Everything that decides a run's numbers, plus a few knobs for speed and output."""

    text: str = "nietzsche"  # corpus: "nietzsche" (downloaded/cached) or a path to a UTF-8 file
    max_chars: int = 0  # use only the first N chars of the corpus; 0 = all
    lower: bool = True  # lower-case the text, as the original does
    maxlen: int = 60  # window length in chars
    step: int = 3  # stride between window starts
    hidden: int = 128  # LSTM units
    batch_size: int = 128  # windows per optimizer step (last partial batch included)
    epochs: int = 60  # passes over all windows
    learning_rate: float = 0.01  # base learning rate (RMSprop or Adam)
    rho: float = 0.9  # RMSprop decay of the squared-gradient average (Keras `rho`)
    epsilon: float = 1e-7  # RMSprop epsilon, added inside the square root (Keras 3)
    val_fraction: float = 0.1  # held-out tail of the corpus for validation; 0 = none
    objective: str = "last"  # "last": the char after each window (original); "sequence": all
    carry_state: bool = False  # "sequence" only: contiguous streams, LSTM state carried on
    layers: int = 1  # stacked LSTM layers
    dropout: float = 0.0  # dropout on each layer's outputs while training
    clip_norm: float = 0.0  # clip gradients to this global norm; 0 = off
    optimizer: str = "rmsprop"  # "rmsprop" (Keras 3 semantics) or "adam"
    schedule: str = "constant"  # learning rate: "constant", or "cosine" decay to 5 % (after warmup)
    warmup: int = 0  # optimizer steps of linear learning-rate warm-up
    guard: float = 1.2  # an epoch loss above guard x the best one counts as divergence; 0 = off
    dtype: str = "float32"  # matmul operands: float32, or bfloat16 on GPU/TPU (params stay f32)
    seed: int = 0  # root of every PRNG key: init, data order, samples
    steps_per_call: int = 10  # optimizer steps per jitted call (speed only, same numbers)
    sample_length: int = 400  # chars generated per temperature after each epoch
    temperatures: tuple[float, ...] = (0.2, 0.5, 1.0, 1.2)  # empty = no per-epoch samples
    keep: int = 5  # checkpoints kept on disk

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["temperatures"] = list(self.temperatures)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of `to_dict`; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "temperatures" in kw:
            kw["temperatures"] = tuple(float(t) for t in kw["temperatures"])
        return cls(**kw)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def check(self) -> Config:
        """Raise a `CharjaxError` naming the first nonsensical value; return self otherwise."""
        positive = ("maxlen", "step", "hidden", "layers", "batch_size", "steps_per_call", "keep")
        for name in positive:
            if getattr(self, name) < 1:
                raise CharjaxError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        for name in ("epochs", "max_chars", "sample_length", "warmup"):
            if getattr(self, name) < 0:
                raise CharjaxError(
                    f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise CharjaxError(
                f"--learning-rate must be a positive number, got {self.learning_rate}"
            )
        if not (0 <= self.rho < 1 and self.epsilon > 0):
            raise CharjaxError(
                f"RMSprop needs 0 <= rho < 1 and epsilon > 0, got {self.rho}, {self.epsilon}"
            )
        if any(not math.isfinite(t) or t < 0 for t in self.temperatures):
            raise CharjaxError(
                f"--temperatures must be finite numbers >= 0, got {list(self.temperatures)}"
            )
        if not 0 <= self.val_fraction < 1:
            raise CharjaxError(
                f"--val-fraction must be in [0, 1) (0 = no validation), got {self.val_fraction}"
            )
        if not 0 <= self.dropout < 1:
            raise CharjaxError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm >= 0):
            raise CharjaxError(f"--clip-norm must be >= 0 (0 = off), got {self.clip_norm}")
        if not (math.isfinite(self.guard) and (self.guard == 0 or self.guard > 1)):
            raise CharjaxError(
                f"--guard must be above 1 (a factor over the best epoch's loss) or 0 (off), "
                f"got {self.guard}"
            )
        choices = {
            "objective": ("last", "sequence"),
            "optimizer": ("rmsprop", "adam"),
            "schedule": ("constant", "cosine"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CharjaxError(
                    f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.carry_state and (self.objective != "sequence" or self.step != self.maxlen):
            raise CharjaxError(
                "--carry-state reads the text as contiguous streams: it needs --objective "
                f"sequence and --step equal to --maxlen (got {self.objective}, step {self.step}, "
                f"maxlen {self.maxlen})"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise CharjaxError(f"--dtype must be float32 or bfloat16, got {self.dtype!r}")
        return self


# Fields that change the trained numbers; a resumed run must agree with the checkpoint on these.
MATH_FIELDS = (
    "text",
    "max_chars",
    "lower",
    "maxlen",
    "step",
    "hidden",
    "batch_size",
    "learning_rate",
    "rho",
    "epsilon",
    "seed",
    "dtype",
    "val_fraction",
    "objective",
    "carry_state",
    "layers",
    "dropout",
    "clip_norm",
    "optimizer",
    "schedule",
    "warmup",
)
