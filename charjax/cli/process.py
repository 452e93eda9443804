"""`quiet_process`: the process-wide settings a command applies at start-up (never a library
import): orbax's own reports of a failed save or restore kept out of the output, which charjax
gives in one line itself."""

from __future__ import annotations

import logging
import sys
import threading
import warnings

from charjax import orbax_errors


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


def _drop_orbax_leftovers(previous):
    """An exception hook (for `sys.unraisablehook` or `threading.excepthook`: both pass the
    error as `exc_value`) that drops orbax's leftovers (`orbax_errors.orbax_leftover`) and
    passes anything else on to `previous`."""

    def hook(args):
        if not orbax_errors.orbax_leftover(args.exc_value, getattr(args, "object", None)):
            previous(args)

    hook.quiet = True
    return hook


def _drop_unawaited_orbax(previous):
    """A `warnings.showwarning` that drops Python's "coroutine 'X' was never awaited" when X is
    one of orbax's coroutines (a failed save or restore leaves some unstarted) and shows any
    other warning with `previous`."""

    def show(message, category, filename, lineno, file=None, line=None):
        unawaited = orbax_errors.UNAWAITED.fullmatch(str(message))
        named = unawaited if category is RuntimeWarning else None
        if named is None or not orbax_errors.orbax_coroutine(named.group(1)):
            previous(message, category, filename, lineno, file, line)

    show.quiet = True
    return show


class DropUnretrievedOrbaxErrors(logging.Filter):
    """Drops asyncio's "Task (or Future, _GatheringFuture) exception was never retrieved"
    for orbax's tasks that failed on an OS error (a full or read-only disk), in writing a save's
    temporary folder (a file it wrote could not be read back) or in reading an array (a damaged
    checkpoint): the failed save or restore already said so in one line, and asyncio would log
    the same error again, with a TensorStore spec, for each task when it is collected. Others
    pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not orbax_errors.UNRETRIEVED.match(str(record.msg)):
            return True
        return not orbax_errors.failed_save_or_read(error)
