"""`charjax-plot`: a run's loss curves from its metrics.jsonl as a PNG, or several runs'
held-out losses side by side (`--runs`)."""

from __future__ import annotations

import argparse

from charjax.cli.common import Parser, checkpoint_dir_flag
from charjax.plot import BY


def plot_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-plot", description="Plot a run's loss curves from its metrics.jsonl as a PNG."
    )
    checkpoint_dir_flag(p)
    p.add_argument(
        "--out",
        default=None,
        help="PNG to write (default: <checkpoint-dir>/loss.png; with --runs: runs.png)",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        metavar="DIR",
        help="instead: the held-out loss of each of these runs' folders, side by side",
    )
    p.add_argument(
        "--by",
        choices=BY,
        default="minutes",
        help="with --runs: against each run's wall minutes or its epochs (default: minutes)",
    )
    p.add_argument(
        "--labels", metavar="A,B,...", help="with --runs: a name a run (default: the folders')"
    )
    p.add_argument("--title", help="with --runs: the picture's title")
    return p


def plot(args: argparse.Namespace) -> int:
    from charjax.plot import plot_metrics, plot_runs

    if args.runs:
        labels = args.labels.split(",") if args.labels else None
        out = args.out or "runs.png"
        print(plot_runs(args.runs, out, by=args.by, labels=labels, title=args.title))
    else:
        print(plot_metrics(args.checkpoint_dir, args.out))
    return 0
