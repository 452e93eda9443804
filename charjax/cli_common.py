"""What every command line shares: one-line usage errors, number parsing, the error handling
that turns every failure into one line on stderr, and the checkpoint flags."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from charjax.errors import CharjaxError, Interrupted


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the flag, the problem, where to look), with the
    --debug flag every command has (`run` reads it)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def floats(text: str) -> tuple[float, ...]:
    """'0.2,0.5' -> (0.2, 0.5); '' -> ()."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def run(main: Callable[[argparse.Namespace], int], parser, argv) -> int:
    """Run a command; every failure ends as one line on stderr (`--debug`: the traceback)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code
    try:
        return main(args)
    except Interrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        what = "; the epoch in progress was not saved" if parser.prog == "charjax-train" else ""
        print(f"{parser.prog}: interrupted{what}", file=sys.stderr)
        return 130
    except CharjaxError as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug or an environment problem: still one line, no traceback
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"{parser.prog}: unexpected error: {type(e).__name__}: {first} (rerun with --debug "
            "for the traceback)",
            file=sys.stderr,
        )
        return 1


def checkpoint_flags(p: argparse.ArgumentParser) -> None:
    """--checkpoint-dir and --epoch, for the commands that read a saved run."""
    p.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="run directory written by charjax-train (default: checkpoints/)",
    )
    p.add_argument("--epoch", type=int, default=None, help="epoch to load (default: latest)")
