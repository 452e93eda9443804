"""`charjax-plot`: a run's loss curves from its metrics.jsonl as a PNG."""

from __future__ import annotations

import argparse

from charjax.cli.common import Parser, checkpoint_dir_flag


def plot_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-plot", description="Plot a run's loss curves from its metrics.jsonl as a PNG."
    )
    checkpoint_dir_flag(p)
    p.add_argument("--out", default=None, help="PNG to write (default: <checkpoint-dir>/loss.png)")
    return p


def plot(args: argparse.Namespace) -> int:
    from charjax.plot import plot_metrics

    print(plot_metrics(args.checkpoint_dir, args.out))
    return 0
