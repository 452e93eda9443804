"""What every command shares: the parser (one-line usage errors, --debug, no abbreviations),
flags generated from the `Config` fields' metadata, number parsing, and `run`, which applies
the process-wide settings of a command (`quiet_process`), turns every failure into one line on
stderr and a closed stdout pipe into a quiet end."""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import fields
from difflib import get_close_matches

from charjax.config import GROUPS, Config, flag
from charjax.errors import CharjaxError, Interrupted, os_error, out_of_memory


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


def quiet_process() -> None:
    """Keep orbax's own reports of a failed save or restore out of this process's output,
    which charjax gives in one line itself (`checkpoint.SaveFailed`, `integrity.Damaged`): its
    absl logs (every save at INFO, a failed write again from each of its threads), the
    leftovers of its threads and coroutines (`sys.unraisablehook`, `threading.excepthook`:
    a failed save's "Event loop is closed", each abandoned array read of a failed restore,
    with a TensorStore spec of ~60 lines), asyncio's "Task exception was never retrieved" for
    each of its tasks that failed (`DropUnretrievedOrbaxErrors`), and Python's "coroutine ...
    was never awaited" for its coroutines that a failure left unstarted (`warnings`). Others
    pass as they are. Process-wide, so each command applies it at start-up (`run`), never a
    library import; applying it again changes nothing."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    if not getattr(sys.unraisablehook, "quiet", False):
        sys.unraisablehook = _drop_orbax_leftovers(sys.unraisablehook)
    if not getattr(threading.excepthook, "quiet", False):
        threading.excepthook = _drop_orbax_leftovers(threading.excepthook)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, DropUnretrievedOrbaxErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(DropUnretrievedOrbaxErrors())
    if not getattr(warnings.showwarning, "quiet", False):
        warnings.showwarning = _drop_unawaited_orbax(warnings.showwarning)


# orbax's coroutine that reads one array: when a read fails, it re-raises even the
# GeneratorExit of its siblings' finalization, each as an unraisable error with a TensorStore spec
_ORBAX_READ = "_read_array_index_and_device_put"


def _orbax_read(code) -> bool:
    return code is not None and code.co_name == _ORBAX_READ and "orbax" in code.co_filename


def _raised_by_orbax_read(error: BaseException) -> bool:
    """Whether `error` was raised in orbax's read of an array (a damaged checkpoint)."""
    tb = error.__traceback__
    while tb is not None:
        if _orbax_read(tb.tb_frame.f_code):
            return True
        tb = tb.tb_next
    return False


def _orbax_leftover(args) -> bool:
    """Whether an unraisable error or a thread's exception is one of orbax's leftovers: an
    "Event loop is closed" of a failed save's callbacks, or an array read that a failed
    restore abandoned (the restore already failed in one line)."""
    error, source = args.exc_value, getattr(args, "object", None)
    if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
        return True
    return _orbax_read(getattr(source, "cr_code", None)) or (
        error is not None and _raised_by_orbax_read(error)
    )


def _drop_orbax_leftovers(previous):
    """An exception hook (for `sys.unraisablehook` or `threading.excepthook`: both pass the
    error as `exc_value`) that drops orbax's leftovers (`_orbax_leftover`) and passes anything
    else on to `previous`."""

    def hook(args):
        if not _orbax_leftover(args):
            previous(args)

    hook.quiet = True
    return hook


_UNAWAITED = re.compile(r"coroutine '([\w.<>]+)' was never awaited")


def _drop_unawaited_orbax(previous):
    """A `warnings.showwarning` that drops Python's "coroutine 'X' was never awaited" when X is
    one of orbax's coroutines (a failed save or restore leaves some unstarted) and shows any
    other warning with `previous`."""

    def show(message, category, filename, lineno, file=None, line=None):
        named = _UNAWAITED.fullmatch(str(message)) if category is RuntimeWarning else None
        if named is None or not _orbax_coroutine(named.group(1)):
            previous(message, category, filename, lineno, file, line)

    show.quiet = True
    return show


def _orbax_coroutine(qualname: str) -> bool:
    """Whether a coroutine function of this qualified name is defined in one of orbax's loaded
    modules (for a nested one: the function it is nested in)."""
    outer, nested = qualname.split(".<locals>.")[0], ".<locals>." in qualname
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("orbax.") or module is None:
            continue
        found = module
        for name in outer.split("."):
            found = getattr(found, name, None)
        code = getattr(found, "__code__", None)
        if code is not None and "orbax" in code.co_filename:
            if nested or inspect.iscoroutinefunction(found):
                return True
    return False


class DropUnretrievedOrbaxErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for orbax's tasks that failed on an
    OS error (a full or read-only disk) or in reading an array (a damaged checkpoint): the
    failed save or restore already said so in one line, and asyncio would log the same error
    again, with a TensorStore spec, for each task when it is collected. Others pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not str(record.msg).startswith("Task exception was never retrieved"):
            return True
        return os_error(error) is None and not _raised_by_orbax_read(error)
