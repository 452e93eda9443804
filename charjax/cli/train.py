"""`charjax-train`: flags (from the config) -> `runner.train_run`."""

from __future__ import annotations

import argparse
import time
import warnings

from charjax.cli.common import Parser, checkpoint_dir_flag, config_flags
from charjax.config import PRESETS, Config


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-train",
        description="Train the char-level LSTM (defaults = the Keras Nietzsche example).",
    )
    groups = config_flags(p)
    run = groups["run"]
    checkpoint_dir_flag(run)
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --checkpoint-dir from its latest epoch",
    )
    run.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="a named recipe; flags given beside it override its values. original: the Keras "
        "example (the defaults); quality: the lowest held-out loss measured in 20 minutes of a "
        "2-core CPU (2x256 layer-normalised LSTM on carried streams of 25 chars, dropout 0.3, "
        "weight-drop 0.2, Adam 1e-2 with warm-up and cosine decay, clip 5, --keep-best), "
        "trained for --minutes 20: the epochs that fit 20 minutes here; "
        "long-streams: two LSTM(256) layers on streams of 100 chars, dropout 0.3, Adam 3e-3, "
        "45 epochs, --keep-best (the device check times it)",
    )
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar: one plain line per epoch (also when not on a terminal)",
    )
    devices = groups["devices"]
    devices.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="multi-process run: address of process 0 (default: $JAX_COORDINATOR_ADDRESS; "
        "unset = one process)",
    )
    devices.add_argument(
        "--num-processes",
        type=int,
        help="multi-process run: number of processes (default: $JAX_NUM_PROCESSES)",
    )
    devices.add_argument(
        "--process-id",
        type=int,
        help="multi-process run: this process's index (default: $JAX_PROCESS_ID)",
    )
    devices.add_argument(
        "--peer-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="multi-process run: a process whose peers have not been heard from for this long "
        "stops, naming the lost one (default: 60)",
    )
    return p


def train(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # a --minutes budget counts from here: jax's import included
    from charjax import parallel

    parallel.request_cpu_devices()  # before jax starts its backends
    parallel.tune_host_malloc()
    from charjax import peers, runner
    from charjax.errors import CharjaxError, out_of_memory

    # An optional persistent compilation cache that cannot be written (a full disk) is harmless:
    # the run goes on, and the disk's own problem is reported where it matters, at a save.
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache")

    if args.peer_timeout <= 0:
        raise CharjaxError(f"--peer-timeout must be > 0 seconds, got {args.peer_timeout:g}")
    parallel.start_distributed(
        args.coordinator, args.num_processes, args.process_id, peer_timeout=args.peer_timeout
    )
    peers.watch(
        args.peer_timeout,
        f"charjax-train --resume --checkpoint-dir {args.checkpoint_dir} on each (same "
        "--coordinator, --num-processes and --process-id)",
    )
    cfg, given = config_of(args)
    try:
        runner.train_run(
            cfg,
            args.checkpoint_dir,
            resume=args.resume,
            given=given,
            progress=False if args.quiet else None,
            started=started,
        )
    except (CharjaxError, KeyboardInterrupt):
        raise
    except Exception as e:
        too_big = out_of_memory(e, "charjax-train")  # a model or batch too big: one line
        peers.fail(too_big or e, args.debug)  # multi-process: a lost peer is named, it ends
        if too_big is not None:
            raise too_big from e
        raise
    peers.stop()
    return 0


def config_of(args: argparse.Namespace) -> tuple[Config, dict]:
    """(the run's config: its --preset's values, overridden by the flags given; the flags
    given). A resumed run keeps its own recipe, so --preset with --resume is refused."""
    from charjax.errors import CharjaxError

    given = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    if args.preset and args.resume:
        raise CharjaxError(
            "--preset sets up a new run; a resumed run keeps its own recipe (drop --preset)"
        )
    if "epochs" in given and given.get("minutes"):
        raise CharjaxError(
            "--minutes chooses the epoch count that fits its budget, and --epochs sets it: "
            "give one of them"
        )
    recipe = dict(PRESETS[args.preset]) if args.preset else {}
    if "epochs" in given:  # a preset's budget gives way to an epoch count typed beside it
        recipe.pop("minutes", None)
    if given.get("minutes"):
        recipe.pop("epochs", None)
    return Config(**{**recipe, **given}), given
