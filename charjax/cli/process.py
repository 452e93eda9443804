"""`quiet_process`: the process-wide settings a command applies at start-up (never a library
import): orbax's own reports of a failed save or restore kept out of the output, which charjax
gives in one line itself."""

from __future__ import annotations

import inspect
import logging
import re
import sys
import threading
import warnings

from charjax.errors import os_error


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


# asyncio's message for the error of a task or a future (of any class: a gathering of
# futures, `_GatheringFuture`) that nobody retrieved
_UNRETRIEVED = re.compile(r"\w*(Task|Future) exception was never retrieved")


# the folder orbax writes a checkpoint into before renaming it: an error naming it is a failed save
_SAVE_TMP = ".orbax-checkpoint-tmp"


class DropUnretrievedOrbaxErrors(logging.Filter):
    """Drops asyncio's "Task (or Future, _GatheringFuture) exception was never retrieved"
    for orbax's tasks that failed on an OS error (a full or read-only disk), in writing a save's
    temporary folder (a file it wrote could not be read back) or in reading an array (a damaged
    checkpoint): the failed save or restore already said so in one line, and asyncio would log
    the same error again, with a TensorStore spec, for each task when it is collected. Others
    pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _UNRETRIEVED.match(str(record.msg)):
            return True
        failed_save = os_error(error) is not None or _SAVE_TMP in str(error)
        return not failed_save and not _raised_by_orbax_read(error)
