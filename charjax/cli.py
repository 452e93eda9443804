"""Command lines behind `scripts/*.py` and the `charjax-*` entry points: flags -> library calls.

Problems the user can fix (`CharjaxError`, bad flag values) end as one line on stderr and exit
code 2; `--debug` shows the traceback instead. The commands that read a checkpoint (sample,
score) live in `cli_checkpoint`, the shared plumbing in `cli_common`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from charjax.cli_checkpoint import sample_main, sample_parser, score_main, score_parser
from charjax.cli_common import Parser, finite, floats, run
from charjax.config import Config

__all__ = ["plot_main", "sample_main", "sample_parser", "score_main", "score_parser", "train_main"]

_DEFAULTS = Config()


def _config_flag(parser, name: str, help: str, type: Callable, **kw) -> None:
    """A flag for Config field `name`, left out of the namespace unless given (for --resume)."""
    default = getattr(_DEFAULTS, name)
    shown = ",".join(f"{t:g}" for t in default) if isinstance(default, tuple) else default
    parser.add_argument(
        "--" + name.replace("_", "-"),
        dest=name,
        default=argparse.SUPPRESS,
        type=type,
        help=f"{help} (default: {shown})",
        **kw,
    )


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-train",
        description="Train the char-level LSTM (defaults = the Keras Nietzsche example).",
    )
    _config_flag(
        p, "text", "corpus: 'nietzsche' or a path to a UTF-8 text file", type=str, metavar="PATH"
    )
    _config_flag(
        p, "max_chars", "use only the first N chars of the text; 0 = all", type=int, metavar="N"
    )
    _config_flag(
        p, "epochs", "epochs to train in total (a resumed run counts earlier ones)", type=int
    )
    _config_flag(p, "batch_size", "windows per optimizer step", type=int)
    _config_flag(p, "maxlen", "window length in chars", type=int)
    _config_flag(p, "step", "stride between window starts", type=int)
    _config_flag(p, "hidden", "LSTM units", type=int)
    _config_flag(p, "layers", "stacked LSTM layers", type=int)
    _config_flag(p, "learning_rate", "learning rate", type=float)
    _config_flag(
        p,
        "val_fraction",
        "held-out tail of the text scored after each epoch; 0 = no validation",
        type=finite,
        metavar="F",
    )
    _config_flag(
        p,
        "objective",
        "last: predict the char after each window (the original); sequence: every next char "
        "(then --step equal to --maxlen is sensible)",
        type=str,
        choices=("last", "sequence"),
    )
    p.add_argument(
        "--carry-state",
        dest="carry_state",
        action="store_true",
        default=argparse.SUPPRESS,
        help="with --objective sequence: read the text as --batch-size contiguous streams and "
        "carry the LSTM state from each window to the next (truncated backpropagation through "
        "time; needs --step equal to --maxlen)",
    )
    _config_flag(p, "dropout", "dropout on each LSTM layer's outputs while training", type=finite)
    _config_flag(p, "clip_norm", "clip gradients to this global norm; 0 = off", type=finite)
    _config_flag(p, "optimizer", "update rule", type=str, choices=("rmsprop", "adam"))
    _config_flag(
        p,
        "schedule",
        "learning rate: constant, or cosine decay to 5 %% over the run",
        type=str,
        choices=("constant", "cosine"),
    )
    _config_flag(p, "warmup", "optimizer steps of linear learning-rate warm-up", type=int)
    _config_flag(
        p,
        "guard",
        "divergence guard: an epoch loss above this x the best epoch's (or not finite) restores "
        "the last checkpoint and halves the learning rate; 0 = off",
        type=finite,
    )
    _config_flag(p, "dtype", "matmul precision: float32, or bfloat16 (for GPU/TPU)", type=str)
    _config_flag(p, "seed", "seed of every PRNG key (init, data order, samples)", type=int)
    _config_flag(p, "keep", "checkpoints to keep on disk", type=int)
    _config_flag(p, "sample_length", "chars generated per temperature after each epoch", type=int)
    _config_flag(
        p, "temperatures", "comma list of sampling temperatures; '' = no samples", type=floats
    )
    _config_flag(p, "steps_per_call", "optimizer steps per jitted call (speed only)", type=int)
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="where checkpoints go (default: checkpoints/)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --checkpoint-dir from its latest epoch",
    )
    p.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="multi-process run: address of process 0 (default: $JAX_COORDINATOR_ADDRESS; "
        "unset = one process)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help="multi-process run: number of processes (default: $JAX_NUM_PROCESSES)",
    )
    p.add_argument(
        "--process-id",
        type=int,
        default=None,
        help="multi-process run: this process's index (default: $JAX_PROCESS_ID)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar: one plain line per epoch (also when not on a terminal)",
    )
    return p


def _train(args: argparse.Namespace) -> int:
    from charjax import parallel

    parallel.request_cpu_devices()  # before jax starts its backends
    parallel.tune_host_malloc()
    from charjax import runner

    parallel.start_distributed(args.coordinator, args.num_processes, args.process_id)
    given = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    runner.train_run(
        Config(**given),
        args.checkpoint_dir,
        resume=args.resume,
        given=given,
        progress=False if args.quiet else None,
    )
    return 0


def plot_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-plot", description="Plot a run's loss curves from its metrics.jsonl as a PNG."
    )
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="run directory written by charjax-train (default: checkpoints/)",
    )
    p.add_argument("--out", default=None, help="PNG to write (default: <checkpoint-dir>/loss.png)")
    return p


def _plot(args: argparse.Namespace) -> int:
    from charjax.plot import plot_metrics

    print(plot_metrics(args.checkpoint_dir, args.out))
    return 0


def plot_main(argv=None) -> int:
    return run(_plot, plot_parser(), argv)


def train_main(argv=None) -> int:
    return run(_train, train_parser(), argv)
