"""`charjax-score`: bits/char, nats/char and perplexity of a text under a saved model; the work
is `inference.score_text`'s."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from charjax.cli.common import Parser, checkpoint_dir_flag, finite, note_interrupted
from charjax.config import READINGS


def score_parser() -> argparse.ArgumentParser:
    from charjax import dynamic  # its defaults and tuning grid, in the help

    p = Parser(
        prog="charjax-score",
        description="Bits per char and perplexity of a text under a checkpoint (lower is better).",
    )
    p.add_argument(
        "text",
        nargs="?",
        default=None,
        help="UTF-8 text file to score (default: the run's own held-out tail, --val-fraction)",
    )
    checkpoint_dir_flag(p, epoch=True)
    p.add_argument(
        "--mode",
        choices=READINGS,
        default=None,
        help="window: each char from the maxlen chars before it (the original objective); "
        "stateful: one pass carrying the LSTM state (default: how the model was trained)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=1,
        help="window mode: score every N-th char only (faster; default: 1 = every char)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="also dynamic evaluation (Krause et al. 2018): read statefully, and after scoring "
        "each --maxlen chars take a gradient step on them; printed beside the static score",
    )
    p.add_argument(
        "--dynamic-rule",
        choices=dynamic.RULES,
        default=dynamic.DEFAULT_RULE,
        help="dynamic evaluation's update: sgd, or rms (Krause et al.'s: each weight's step "
        "divided by its gradient's root mean square on the training text, and pulled back to "
        f"the trained value in proportion to it) (default: {dynamic.DEFAULT_RULE})",
    )
    p.add_argument(
        "--dynamic-lr",
        type=finite,
        default=None,
        help="dynamic evaluation's step size on the mean loss (default: by rule, "
        + ", ".join(f"{rule} {lr:g}" for rule, (lr, _) in dynamic.DEFAULTS.items())
        + ")",
    )
    p.add_argument(
        "--dynamic-decay",
        type=finite,
        default=None,
        help="dynamic evaluation's pull back towards the trained parameters per step "
        "(default: by rule, "
        + ", ".join(f"{rule} {decay:g}" for rule, (_, decay) in dynamic.DEFAULTS.items())
        + ")",
    )
    p.add_argument(
        "--dynamic-tune",
        action="store_true",
        help="choose --dynamic-lr and --dynamic-decay for this model: the best of a small grid "
        f"on the last {dynamic.TUNE_CHARS:,} chars of its training text (never the scored text); "
        "implies --dynamic; minutes of work",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def score(args: argparse.Namespace) -> int:
    from charjax import dynamic, inference

    inference.check_stride(args.stride)  # before reading the checkpoint
    chosen = None
    if args.dynamic or args.dynamic_tune:
        chosen = dynamic.settings(
            args.dynamic_rule, args.dynamic_lr, args.dynamic_decay, tune=args.dynamic_tune
        )
    saved = inference.load(args.checkpoint_dir, args.epoch, args.best)
    note_interrupted(saved, "charjax-score")
    with _progress_bar() as progress:
        record, unknown = inference.score_text(
            saved,
            args.text,
            mode=args.mode,
            stride=args.stride,
            directory=args.checkpoint_dir,
            progress=progress,
            dynamic=chosen,
        )
    if args.json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return 0
    print(
        f"{record['text']}: {record['bits_per_char']:.4f} bits/char, "
        f"{record['nats_per_char']:.4f} nats/char, perplexity {record['perplexity']:.3f} "
        f"({record['chars_scored']:,} chars scored, {record['mode']} mode, "
        f"epoch {record['epoch']})"
    )
    if chosen is not None:
        d = record["dynamic"]
        print(
            f"  dynamic evaluation: {d['bits_per_char']:.4f} bits/char, "
            f"{d['nats_per_char']:.4f} nats/char, perplexity {d['perplexity']:.3f} (stateful, "
            f"a {d['rule']} step every {d['segment']} chars, --dynamic-lr {d['lr']:g}, "
            f"--dynamic-decay {d['decay']:g}; the static figure above is the comparable one)"
        )
    if chosen is not None and "tried" in record["dynamic"]:
        tried = ", ".join(
            f"{t['lr']:g}/{t['decay']:g}: {t['nats_per_char']:.4f}"
            for t in record["dynamic"]["tried"]
        )
        print(
            f"  (--dynamic-tune, on the last {record['dynamic']['tuned_on_chars']:,} training "
            f"chars, nats/char by lr/decay: {tried})"
        )
    if unknown:
        listed = ", ".join(f"{ch!r} x{n}" for ch, n in unknown.most_common())
        print(
            f"skipped {sum(unknown.values()):,} chars not in the model's vocabulary: {listed}",
            file=sys.stderr,
        )
    return 0


@contextlib.contextmanager
def _progress_bar():
    """A progress bar on stderr while scoring, when stderr is a terminal (else nothing)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("scoring", BarColumn(), MofNCompleteColumn(), "chars", TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
