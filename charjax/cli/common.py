"""What every command shares: the parser (one-line usage errors, --debug, no abbreviations),
flags generated from the `Config` fields' metadata, number parsing, and `run`, which applies
the process-wide settings of a command (`quiet_process`), turns every failure into one line on
stderr and a closed stdout pipe into a quiet end."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from difflib import get_close_matches

from charjax.cli.process import quiet_process
from charjax.config import GROUPS, Config, flag
from charjax.errors import CharjaxError, Interrupted, out_of_memory


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the flag, the problem, where to look), with the
    --debug flag every command has (`run` reads it). Flags are never abbreviated: `--epoch` on
    a command that has only `--epochs` is an error, not a guess (the error suggests it)."""

    def __init__(self, **kw):
        super().__init__(allow_abbrev=False, **kw)
        self.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, with a guess for each misspelt flag in the error (on every Python)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self.guesses(extras)}")
        return parsed

    def guesses(self, words: list[str]) -> str:
        """'; did you mean --epochs?' for the flags among `words` that are close to one of
        this command's (`--learning_rate` -> `--learning-rate`, `--temprature` ->
        `--temperature`, `--epoch` -> `--epochs`: never taken, only suggested); '' if none."""
        options = [o for o in self._option_string_actions if o.startswith("--")]
        found = []
        for word in words:
            if not word.startswith("-") or self._negative_number_matcher.match(word):
                continue
            name = word.split("=", 1)[0]
            dashed = "--" + name.lstrip("-").replace("_", "-")
            close = [dashed] if dashed in options else get_close_matches(dashed, options, 1, 0.7)
            if close:
                found.append((name, close[0]))
        if not found:
            return ""
        if len(found) == 1:
            return f"; did you mean {found[0][1]}?"
        return "; did you mean " + ", ".join(f"{g} for {n}" for n, g in found) + "?"


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


class _JoinPaths(argparse.Action):
    """`--text a b` -> 'a' + os.pathsep + 'b': several paths in the one string of the config."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, os.pathsep.join(values))


class _Repeat(argparse.Action):
    """A repeatable flag -> a tuple of its values, in the order given (`--glob a --glob b`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (*getattr(namespace, self.dest, ()), values))


class _Inverted(argparse.BooleanOptionalAction):
    """A switch that sets its field to False (`--keep-case`: lower = False; `--no-keep-case`:
    True)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string.startswith("--no-"))


TYPES = {"int": int, "float": finite, "str": str, "tuple[float, ...]": floats}


def config_flags(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per `Config` field (help, choices, default from its metadata) in named groups
    -> the groups, for the command's own flags. A flag is left out of the parsed namespace
    unless given, so that `--resume` knows what the user set."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    defaults = Config()
    for f in fields(Config):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"]}
        if f.type == "bool":  # --x / --no-x: a preset's True can be turned off
            kw["action"] = _Inverted if meta.get("inverted") else argparse.BooleanOptionalAction
        elif meta.get("repeat"):
            kw["help"] += f" (default: {' '.join(getattr(defaults, f.name))})"
            kw.update(action=_Repeat, metavar=meta.get("metavar"))
        else:
            default = getattr(defaults, f.name)
            shown = ",".join(f"{t:g}" for t in default) if isinstance(default, tuple) else default
            kw["help"] += f" (default: {shown})"
            kw["type"] = meta.get("type", TYPES[f.type])
            kw.update({k: meta[k] for k in ("choices", "metavar", "nargs") if k in meta})
            if "nargs" in meta:
                kw["action"] = _JoinPaths
        groups[meta["group"]].add_argument(flag(f.name), **kw)
    return groups


def checkpoint_dir_flag(parser, *, epoch: bool = False) -> None:
    """--checkpoint-dir (a run's folder), and with `epoch` the --epoch to read from it."""
    parser.add_argument(
        "--checkpoint-dir",
        default="checkpoints/",
        help="the run's folder: charjax-train writes its checkpoints and metrics.jsonl there, "
        "the other commands read them (default: checkpoints/)",
    )
    if epoch:
        parser.add_argument(
            "--epoch", type=int, default=None, help="epoch to load (default: latest)"
        )
        parser.add_argument(
            "--best",
            action="store_true",
            help="load the epoch with the lowest held-out loss (a run trained with --keep-best)",
        )


PIPE_CLOSED = 141  # 128 + SIGPIPE: how a Unix tool that was writing into a closed pipe ends


def closed_pipe() -> int:
    """stdout's reader went away (`charjax-sample | head -c 200`): end quietly, as Unix tools do
    (no message; exit status `PIPE_CLOSED`). What is still buffered for stdout, and the flush at
    exit, then go to the null device instead of raising again."""
    out = sys.stdout
    if out is not None and out is sys.__stdout__:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, out.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass
    return PIPE_CLOSED


def note_interrupted(saved, prog: str) -> None:
    """Say on stderr that a model read is an interrupted epoch (no whole epoch exists yet)."""
    if saved.interrupted:
        print(
            f"{prog}: no whole epoch is saved yet: using {saved.interrupted} (where the "
            "training was interrupted; charjax-train --resume finishes it)",
            file=sys.stderr,
        )


def run(main: Callable[[argparse.Namespace], int], parser, argv) -> int:
    """Run a command; every failure ends as one line on stderr (`--debug`: the traceback)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # --help | head
            return closed_pipe()
        return done.code
    quiet_process()
    try:
        return main(args)
    except BrokenPipeError:
        return closed_pipe()
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
        too_big = out_of_memory(e, parser.prog)
        if too_big is not None:
            print(f"{parser.prog}: error: {too_big}", file=sys.stderr)
            return 2
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"{parser.prog}: unexpected error: {type(e).__name__}: {first} (rerun with --debug "
            "for the traceback)",
            file=sys.stderr,
        )
        return 1
