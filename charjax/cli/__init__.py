"""The command lines behind `scripts/*.py` and the `charjax-*` entry points, one module each:
flags -> one library call. Problems the user can fix end as one line on stderr, exit code 2
(`--debug` shows the traceback)."""

from __future__ import annotations

import sys

from charjax.cli.common import run
from charjax.cli.export import export, export_parser
from charjax.cli.plot import plot, plot_parser
from charjax.cli.sample import sample, sample_parser
from charjax.cli.score import score, score_parser
from charjax.cli.train import train, train_parser

__all__ = [
    "export_main",
    "plot_main",
    "sample_main",
    "score_main",
    "train_command",
    "train_main",
]

_TRAIN = "import sys; from charjax.cli import train_main; sys.exit(train_main(sys.argv[1:]))"


def train_main(argv=None) -> int:
    return run(train, train_parser(), argv)


def train_command(argv) -> list[str]:
    """The command line of a `charjax-train ARGV` child process, run by this interpreter (its
    environment and its charjax, whether or not the console scripts are on PATH)."""
    return [sys.executable, "-c", _TRAIN, *map(str, argv)]


def sample_main(argv=None) -> int:
    return run(sample, sample_parser(), argv)


def score_main(argv=None) -> int:
    return run(score, score_parser(), argv)


def plot_main(argv=None) -> int:
    return run(plot, plot_parser(), argv)


def export_main(argv=None) -> int:
    return run(export, export_parser(), argv)
