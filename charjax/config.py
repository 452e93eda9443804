"""The one frozen configuration of a run. Each field carries its own flag: help, group, choices
and whether it changes the math, so commands build their flags from it (`cli.flags`).

Defaults are the original Keras example's settings, plus a 10 % held-out tail for validation and
the divergence guard (which changes nothing unless an epoch's loss blows up).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from charjax.errors import CharjaxError

GROUPS = ("data", "model", "objective", "optimizer", "run", "sampling", "devices")
READINGS = ("window", "stateful")  # how a model reads a text back (`objective.reading`)


def _field(default, help: str, group: str, *, math: bool = False, **flag):
    """A config field with its flag's metadata. `math`: changes the trained numbers (a resumed
    run must agree with the checkpoint on it). `flag` may hold choices, metavar, type (the
    argparse type, overriding the one derived from the annotation), cli=False (no flag),
    repeat=True (a tuple of strings, one per use of a repeatable flag), or for a bool flag=NAME
    with inverted=True (a flag that sets the field to False: `--keep-case` for `lower`)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "group": group, "math": math, **flag}
    )


def shown(value) -> str:
    """A config value as a user types it: `0.2,0.5` for a tuple ('' when empty), `1.0`."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "''"
    return str(value)


def flag(name: str) -> str:
    """The command-line flag of field `name`: `batch_size` -> `--batch-size` (or the `flag` its
    metadata names: `lower` -> `--keep-case`)."""
    field = Config.__dataclass_fields__.get(name)
    if field is not None and "flag" in field.metadata:
        return field.metadata["flag"]
    return "--" + name.replace("_", "-")


def typed(name: str, value) -> str:
    """A field's value as the flags a user types for it: `--hidden 32`, `--glob '*.py'
    --glob '*.md'`, `--carry-state` / `--no-carry-state`, and for a field whose flag turns it
    off (lower: `--keep-case`) that flag when it is off, `--no-keep-case` when on."""
    meta = Config.__dataclass_fields__[name].metadata
    if isinstance(value, bool):
        return flag(name) if value != bool(meta.get("inverted")) else "--no-" + flag(name)[2:]
    if meta.get("repeat"):
        return " ".join(f"{flag(name)} {v!r}" for v in value) or f"no {flag(name)}"
    return f"{flag(name)} {shown(value)}"


@dataclass(frozen=True)
class Config:
    """Everything that decides a run's numbers, plus a few knobs for speed and output."""

    text: str = _field(
        "nietzsche",
        "corpus: 'nietzsche', a UTF-8 text file, a folder (its files matching --glob, *.txt by "
        "default), or several of these (joined with a blank line between files)",
        "data",
        math=True,
        metavar="PATH",
        nargs="+",
    )
    recursive: bool = _field(
        False,
        "with a folder in --text: also the matching files of its subfolders",
        "data",
        math=True,
    )
    glob: tuple[str, ...] = _field(
        ("*.txt",),
        "with a folder in --text: the file names to read, a shell pattern; repeat it for "
        "several (--glob '*.py' --glob '*.md'), quoted so that the shell leaves it alone",
        "data",
        math=True,
        metavar="PATTERN",
        repeat=True,
    )
    max_chars: int = _field(
        0, "use only the first N chars of the text; 0 = all", "data", math=True, metavar="N"
    )
    lower: bool = _field(
        True,
        "keep upper-case letters as they are (a larger vocabulary) instead of lower-casing the "
        "text as the original does",
        "data",
        math=True,
        flag="--keep-case",
        inverted=True,
    )
    maxlen: int = _field(60, "window length in chars", "data", math=True)
    step: int = _field(3, "stride between window starts", "data", math=True)
    hidden: int = _field(128, "LSTM units", "model", math=True)
    batch_size: int = _field(128, "windows per optimizer step", "optimizer", math=True)
    epochs: int = _field(60, "epochs to train in total (a resumed run counts earlier ones)", "run")
    minutes: float = _field(
        0.0,
        "train for as many epochs as fit M minutes of wall time here (validation, samples and "
        "saves included): the run times its first steps, chooses the epoch count, says it and "
        "records it (a resume keeps it); then it is the run of --epochs N. Not with --epochs; "
        "0 = --epochs decides",
        "run",
        metavar="M",
    )
    learning_rate: float = _field(0.01, "learning rate", "optimizer", math=True, type=float)
    rho: float = _field(0.9, "RMSprop decay (Keras `rho`)", "optimizer", math=True, cli=False)
    epsilon: float = _field(
        1e-7, "RMSprop epsilon, inside the square root (Keras 3)", "optimizer", math=True, cli=False
    )
    val_fraction: float = _field(
        0.1,
        "held-out tail of the text scored after each epoch; 0 = no validation",
        "data",
        math=True,
        metavar="F",
    )
    objective: str = _field(
        "last",
        "last: predict the char after each window (the original); sequence: every next char "
        "(then --step equal to --maxlen is sensible)",
        "objective",
        math=True,
        choices=("last", "sequence"),
    )
    carry_state: bool = _field(
        False,
        "with --objective sequence: read the text as --batch-size contiguous streams and carry "
        "the LSTM state from each window to the next (truncated backpropagation through time; "
        "needs --step equal to --maxlen)",
        "objective",
        math=True,
    )
    vary_length: int = _field(
        0,
        "with --carry-state: move each window boundary of the streams by a random shift of up "
        "to D chars, so windows run --maxlen +- 2D chars and are cut at other places each "
        "step (AWD-LSTM's variable BPTT length: the steps per epoch stay, and each step's "
        "learning rate is scaled by its length / --maxlen); 0 = fixed windows",
        "objective",
        math=True,
        metavar="D",
    )
    layers: int = _field(1, "stacked LSTM layers", "model", math=True)
    cell: str = _field(
        "lstm",
        "recurrent cell of every layer: lstm (Keras' LSTM, the original), lnlstm (layer "
        "normalisation inside the LSTM), mogrifier (input and state gate each other for "
        "--mogrify-rounds rounds before each LSTM step)",
        "model",
        math=True,
        choices=("lstm", "lnlstm", "mogrifier"),
    )
    mogrify_rounds: int = _field(
        5, "with --cell mogrifier: rounds of gating before each step", "model", math=True,
        metavar="R",
    )  # fmt: skip
    mogrify_rank: int = _field(
        0,
        "with --cell mogrifier: rank of the stacked layers' gating matrices (two thin factors "
        "each, cheaper than a full H x H); 0 = full rank. The first layer reads chars, whose "
        "gating is a lookup at any rank",
        "model",
        math=True,
        metavar="K",
    )
    dropout: float = _field(
        0.0, "dropout on each LSTM layer's outputs while training", "model", math=True
    )
    locked_dropout: bool = _field(
        False,
        "--dropout masks drawn once per sequence and kept at every time step (locked, or "
        "variational, dropout) instead of one per step",
        "model",
        math=True,
    )
    weight_drop: float = _field(
        0.0,
        "DropConnect on each LSTM layer's recurrent kernel while training, one mask per batch "
        "(AWD-LSTM's weight-drop)",
        "model",
        math=True,
        metavar="P",
    )
    recurrent_dropout: float = _field(
        0.0,
        "dropout on the h each LSTM layer feeds back into itself, one mask per sequence for "
        "all its steps (variational recurrent dropout, Gal & Ghahramani 2016)",
        "model",
        math=True,
        metavar="P",
    )
    clip_norm: float = _field(
        0.0, "clip gradients to this global norm; 0 = off", "optimizer", math=True
    )
    optimizer: str = _field(
        "rmsprop", "update rule", "optimizer", math=True, choices=("rmsprop", "adam")
    )
    schedule: str = _field(
        "constant",
        "learning rate: constant, cosine decay to 5 %% over the run, or linear decay to 0 "
        "(after any warm-up)",
        "optimizer",
        math=True,
        choices=("constant", "cosine", "linear"),
    )
    warmup: int = _field(
        0, "optimizer steps of linear learning-rate warm-up", "optimizer", math=True
    )
    ema: float = _field(
        0.0,
        "also keep an exponential moving average of the parameters with this decay (e.g. "
        "0.999): validation, samples, charjax-sample and charjax-score use it; 0 = off",
        "optimizer",
        math=True,
        metavar="DECAY",
    )
    guard: float = _field(
        1.2,
        "divergence guard: an epoch loss above this x the best epoch's (or not finite) restores "
        "the last checkpoint and halves the learning rate; 0 = off",
        "run",
    )
    dtype: str = _field(
        "float32", "matmul precision: float32, or bfloat16 (for GPU/TPU)", "devices", math=True
    )
    seed: int = _field(0, "seed of every PRNG key (init, data order, samples)", "run", math=True)
    steps_per_call: int = _field(10, "optimizer steps per jitted call (speed only)", "devices")
    unroll: int = _field(
        0,
        "time steps per iteration of the LSTM loops (speed only: the same numbers); 0 = by "
        "platform: 1 on CPU, 10 on GPU/TPU",
        "devices",
    )
    lstm_kernel: str = _field(
        "auto",
        "training loops of the LSTM-shaped cells (lstm, lnlstm): xla (the fast scan, its "
        "backward written out), autodiff (the plain scan differentiated by autodiff, as the "
        "mogrifier trains: slower, for comparison), auto = xla (speed only: the same math)",
        "devices",
        choices=("auto", "xla", "autodiff"),
    )
    sample_length: int = _field(400, "chars generated per temperature after each epoch", "sampling")
    temperatures: tuple[float, ...] = _field(
        (0.2, 0.5, 1.0, 1.2), "comma list of sampling temperatures; '' = no samples", "sampling"
    )
    keep: int = _field(5, "checkpoints to keep on disk", "run")
    keep_best: bool = _field(
        False,
        "also keep the epoch with the lowest held-out loss (in the folder's best/), whatever "
        "--keep rotates away; charjax-sample/score --best read it",
        "run",
    )
    patience: int = _field(
        0,
        "stop the run when the held-out loss has not improved for N epochs; 0 = never",
        "run",
        metavar="N",
    )
    log_every: int = _field(
        0,
        "also record the training loss in metrics.jsonl every N optimizer steps; 0 = per epoch",
        "run",
        metavar="N",
    )
    eval_every: int = _field(
        0,
        "also score --eval-chars of the held-out tail every N optimizer steps (into "
        "metrics.jsonl); 0 = only the whole tail after each epoch",
        "run",
        metavar="N",
    )
    eval_chars: int = _field(
        100_000,
        "held-out chars that --eval-every scores: one fixed slice of the tail, placed by --seed",
        "run",
        metavar="N",
    )
    save_every: int = _field(
        0,
        "also save the epoch so far every N optimizer steps, so that a crash loses at most N; "
        "0 = after each epoch (and on Ctrl-C)",
        "run",
        metavar="N",
    )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of `to_dict`; unknown keys (from newer versions) are ignored, missing ones
        (from older versions) take their defaults."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "temperatures" in kw:
            kw["temperatures"] = tuple(float(t) for t in kw["temperatures"])
        if "glob" in kw:
            kw["glob"] = tuple(str(g) for g in kw["glob"])
        if kw.get("lstm_kernel") == "pallas":  # a run of a version with fused GPU kernels
            kw["lstm_kernel"] = "auto"  # (speed only: the same math)
        return cls(**kw)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def check(self) -> Config:
        """Raise a `CharjaxError` naming the first nonsensical value's flag; return self."""
        for rule in _CHECKS:
            rule(self)
        return self


def _check_counts(cfg: Config) -> None:
    """Counts: sizes >= 1, counts and intervals >= 0."""
    positive = (
        "maxlen", "step", "hidden", "layers", "batch_size", "steps_per_call", "keep",
        "mogrify_rounds", "epochs",
    )  # fmt: skip
    for name in positive:
        if getattr(cfg, name) < 1:
            raise CharjaxError(f"{flag(name)} must be >= 1, got {getattr(cfg, name)}")
    for name in (
        "unroll",
        "max_chars",
        "sample_length",
        "warmup",
        "log_every",
        "patience",
        "eval_every",
        "save_every",
        "vary_length",
        "mogrify_rank",
    ):
        if getattr(cfg, name) < 0:
            raise CharjaxError(f"{flag(name)} must be >= 0, got {getattr(cfg, name)}")


def _check_numbers(cfg: Config) -> None:
    """The optimiser's, sampling's and validation's numbers."""
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise CharjaxError(f"--learning-rate must be a positive number, got {cfg.learning_rate}")
    if not (0 <= cfg.rho < 1 and cfg.epsilon > 0):
        raise CharjaxError(
            f"RMSprop needs 0 <= rho < 1 and epsilon > 0, got {cfg.rho}, {cfg.epsilon}"
        )
    if any(not math.isfinite(t) or t < 0 for t in cfg.temperatures):
        raise CharjaxError(
            f"--temperatures must be finite numbers >= 0, got {list(cfg.temperatures)}"
        )
    if not 0 <= cfg.val_fraction < 1:
        raise CharjaxError(
            f"--val-fraction must be in [0, 1) (0 = no validation), got {cfg.val_fraction}"
        )
    if not cfg.glob or not all(cfg.glob):
        raise CharjaxError(
            f"--glob needs a non-empty file name pattern such as '*.py', got {list(cfg.glob)}"
        )
    if not (math.isfinite(cfg.minutes) and cfg.minutes >= 0):
        raise CharjaxError(f"--minutes must be a number of minutes > 0, got {cfg.minutes:g}")
    if cfg.eval_chars < 1:
        raise CharjaxError(f"--eval-chars must be >= 1, got {cfg.eval_chars}")
    if cfg.eval_every and not cfg.val_fraction:
        raise CharjaxError(
            "--eval-every scores the held-out tail, and --val-fraction 0 holds none out; "
            "pass --val-fraction > 0, or drop --eval-every"
        )


def _check_regularisation(cfg: Config) -> None:
    """Regularisation rates, early stopping, clipping and the guard."""
    for name in ("dropout", "weight_drop", "recurrent_dropout", "ema"):
        if not 0 <= getattr(cfg, name) < 1:
            raise CharjaxError(f"{flag(name)} must be in [0, 1), got {getattr(cfg, name)}")
    if (cfg.keep_best or cfg.patience) and not cfg.val_fraction:
        raise CharjaxError(
            "--keep-best and --patience follow the held-out loss, and --val-fraction 0 holds "
            "none out; pass --val-fraction > 0"
        )
    if not (math.isfinite(cfg.clip_norm) and cfg.clip_norm >= 0):
        raise CharjaxError(f"--clip-norm must be >= 0 (0 = off), got {cfg.clip_norm}")
    if not (math.isfinite(cfg.guard) and (cfg.guard == 0 or cfg.guard > 1)):
        raise CharjaxError(
            f"--guard must be above 1 (a factor over the best epoch's loss) or 0 (off), "
            f"got {cfg.guard}"
        )


def _check_choices(cfg: Config) -> None:
    """Fields with a fixed set of values."""
    for f in fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise CharjaxError(
                f"{flag(f.name)} must be one of {', '.join(allowed)}, got {getattr(cfg, f.name)!r}"
            )


def _check_streams(cfg: Config) -> None:
    """Carried streams and the windows they move."""
    if cfg.carry_state and (cfg.objective != "sequence" or cfg.step != cfg.maxlen):
        raise CharjaxError(
            "--carry-state reads the text as contiguous streams: it needs --objective "
            f"sequence and --step equal to --maxlen (got {cfg.objective}, step {cfg.step}, "
            f"maxlen {cfg.maxlen})"
        )
    if cfg.vary_length and not cfg.carry_state:
        raise CharjaxError(
            "--vary-length moves the window boundaries of carried streams: it needs "
            "--carry-state (with --objective sequence and --step equal to --maxlen)"
        )
    if 2 * cfg.vary_length >= cfg.maxlen:
        raise CharjaxError(
            f"--vary-length {cfg.vary_length} would make windows of {cfg.maxlen} chars "
            f"empty (each is --maxlen +- 2D long): use a D below {-(-cfg.maxlen // 2)}"
        )


def _check_cell(cfg: Config) -> None:
    """The cell's options and the matmul dtype."""
    if cfg.mogrify_rank and (cfg.cell != "mogrifier" or cfg.layers < 2):
        raise CharjaxError(
            "--mogrify-rank sets the rank of a mogrifier's stacked layers: it needs --cell "
            "mogrifier and --layers 2 or more (the first layer's gating is a lookup)"
        )
    if cfg.mogrify_rank >= cfg.hidden:
        raise CharjaxError(
            f"--mogrify-rank {cfg.mogrify_rank} is not below --hidden {cfg.hidden}: its "
            "factors would outgrow the full matrix; use a smaller rank, or 0 (full)"
        )
    if cfg.dtype not in ("float32", "bfloat16"):
        raise CharjaxError(f"--dtype must be float32 or bfloat16, got {cfg.dtype!r}")


_CHECKS = (  # in this order: the first rule a config breaks names its flag
    _check_counts, _check_numbers, _check_regularisation, _check_choices, _check_streams,
    _check_cell,
)  # fmt: skip


# Named recipes (`charjax-train --preset NAME`): config values that explicit flags override.
# quality: the lowest held-out loss measured in 20 minutes of a 2-core CPU (docs/results.md, "The
# best model in 20 minutes"): two LN-LSTM(256) layers (`--cell lnlstm`, ~0.02 nats/char below the
# LSTM at equal minutes) on carried streams of 25 chars, dropout 0.3 (level with 0.2
# within the seeds' spread: held-out 1.2337 over three seeds against 1.2375 over two, and a
# smaller gap to the training loss), weight-drop 0.2, Adam at 1e-2, --keep-best, for as many epochs
# as fit 20 minutes of the machine it runs on (`--minutes 20`; `--epochs N` repeats a run's
# count). Width 320 or 384, three layers, a learning rate of 6e-3, batches of 32, streams of 20
# chars and a 300-step warm-up measured no better (or within the seeds' spread: 3-minute runs);
# without weight-drop it overfits in 20 minutes;
# recurrent and locked dropout, EMA and --vary-length measured no better at 11 epochs.
# long-streams: the same model on streams of 100 chars, dropout 0.3, no weight-drop, Adam at
# 3e-3, 45 epochs: 1.321 nats/char held-out at epoch 29 in 11.3 training minutes on a 2-core
# AMD EPYC with AVX-512 (2026-11-26); the device check times its training.
PRESETS = {
    "original": {},  # the Keras example's settings: the defaults
    "quality": dict(
        objective="sequence", carry_state=True, maxlen=25, step=25, batch_size=64, layers=2,
        hidden=256, dropout=0.3, optimizer="adam", learning_rate=0.01, warmup=50,
        schedule="cosine", clip_norm=5.0, weight_drop=0.2, minutes=20.0, keep_best=True,
        cell="lnlstm",
    ),
    "long-streams": dict(
        objective="sequence", carry_state=True, maxlen=100, step=100, batch_size=64, layers=2,
        hidden=256, dropout=0.3, optimizer="adam", learning_rate=0.003, warmup=50,
        schedule="cosine", clip_norm=5.0, epochs=45, keep_best=True,
    ),
}  # fmt: skip

# Fields that change the trained numbers; a resumed run must agree with the checkpoint on these.
MATH_FIELDS = tuple(f.name for f in fields(Config) if f.metadata["math"])
