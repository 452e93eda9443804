"""What is known of the errors orbax, TensorStore and jax's runtime raise, in one place: their
chains of causes, the OS error inside, TensorStore's status words, which part of a checkpoint a
message names, and how to recognise orbax's own leftovers of a failed save or restore. The
modules that report a failure in one line (`checkpoint`, `integrity`, `errors`, `cli.process`)
ask here instead of parsing messages themselves.
"""

from __future__ import annotations

import errno
import inspect
import os
import re
import sys

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint still being written
OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # jax's status of a device out of memory
_STATUS = re.compile(r"[A-Z][A-Z_]+: ")  # TensorStore's: "NOT_FOUND: ...", "DATA_LOSS: ..."
_OS_ERROR = re.compile(r"os_error_code='(\d+)'")  # TensorStore's wrapping of an OS error
_ASKED = re.compile(r"allocat\w* (\d+) bytes")  # "Out of memory (while trying to) allocat..."
_ARRAYS = re.compile(r'(?:Error reading|Metadata at) "([A-Za-z0-9_]+)[./]')  # "params.lstm...
_MISSING = ("NOT_FOUND", "does not exist", "not found")
_CUT = ("OUT_OF_RANGE", "Truncated", "byte range", "nexpected end")
_RECORD = "meta/metadata"  # orbax's name of a checkpoint's JSON record
# orbax's coroutine that reads one array: when a read fails, it re-raises even the
# GeneratorExit of its siblings' finalization, each as an unraisable error with a TensorStore spec
_ORBAX_READ = "_read_array_index_and_device_put"
UNAWAITED = re.compile(r"coroutine '([\w.<>]+)' was never awaited")
# asyncio's message for the error of a task or a future (of any class: a gathering of
# futures, `_GatheringFuture`) that nobody retrieved
UNRETRIEVED = re.compile(r"\w*(Task|Future) exception was never retrieved")


def chain(error: BaseException | None, limit: int = 16) -> list:
    """`error` and its causes (or contexts), outermost first."""
    found = []
    while error is not None and len(found) < limit:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def os_error(error: BaseException) -> str | None:
    """The OS error behind `error`, in words (orbax and TensorStore wrap it: in the chain of
    causes, or as "os_error_code='N'" in a message), or None when it was not an OS error."""
    for seen in chain(error, limit=64):
        if isinstance(seen, FileNotFoundError) and not seen.strerror:  # orbax's "... not found"
            return os.strerror(errno.ENOENT)
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        code = _OS_ERROR.search(str(seen))
        if code:
            return os.strerror(int(code.group(1)))
    return None


def out_of_memory(error: BaseException) -> BaseException | None:
    """The error in `error`'s chain that is jax's RESOURCE_EXHAUSTED, else None."""
    return next((e for e in chain(error, limit=64) if OUT_OF_MEMORY in str(e)), None)


def asked_bytes(error: BaseException) -> int | None:
    """The bytes an out-of-memory error says it tried to allocate, if it says."""
    asked = _ASKED.search(str(error))
    return int(asked.group(1)) if asked else None


def has_status(error: BaseException) -> bool:
    """Whether `error`'s message starts with a TensorStore status ("DATA_LOSS: ", ...): a
    file's problem, never a layout's or the runtime's."""
    return bool(_STATUS.match(str(error)))


def runtime_refused(error: BaseException) -> str | None:
    """What refused a read in the runtime that takes the arrays, not in decoding the files (None
    if nothing did): a plain RuntimeError of jax's C++ side (e.g. "random_device ... device not
    available" when the OS refuses /dev/urandom), with no TensorStore status in the chain."""
    causes = chain(error, limit=64)
    if any(has_status(e) for e in causes):
        return None
    runtime = [e for e in causes if type(e) is RuntimeError]
    return f"RuntimeError: {str(runtime[0]).strip().splitlines()[0]}" if runtime else None


class Unread:
    """What a failed read's messages say (its chain of causes joined): `part`, the arrays they
    name (params, opt_state, ...; None: not said), whether the record is named, and whether a
    file was missing or cut short."""

    def __init__(self, error: BaseException):
        text = " ".join(str(e) for e in chain(error))
        arrays = _ARRAYS.search(text)
        self.part = arrays.group(1) if arrays else None
        self.record = _RECORD in text
        self.missing = any(m in text for m in _MISSING)
        self.cut = any(m in text for m in _CUT)


def _orbax_read(code) -> bool:
    return code is not None and code.co_name == _ORBAX_READ and "orbax" in code.co_filename


def raised_by_orbax_read(error: BaseException) -> bool:
    """Whether `error` was raised in orbax's read of an array (a damaged checkpoint)."""
    tb = error.__traceback__
    while tb is not None:
        if _orbax_read(tb.tb_frame.f_code):
            return True
        tb = tb.tb_next
    return False


def orbax_leftover(error: BaseException | None, source=None) -> bool:
    """Whether an unraisable error or a thread's exception (`source`: the object it came from)
    is one of orbax's leftovers: an "Event loop is closed" of a failed save's callbacks, or an
    array read that a failed restore abandoned (the restore already failed in one line)."""
    if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
        return True
    return _orbax_read(getattr(source, "cr_code", None)) or (
        error is not None and raised_by_orbax_read(error)
    )


def failed_save_or_read(error: BaseException) -> bool:
    """Whether an error nobody retrieved is of an orbax task that failed on an OS error, in
    writing a save's temporary folder, or in reading an array (raised there, or naming the
    array it could not read): a failure already reported."""
    if os_error(error) is not None or TMP_SUFFIX in str(error):
        return True
    return raised_by_orbax_read(error) or Unread(error).part is not None


def retrieve_abandoned_reads() -> int:
    """Retrieve the errors of the reads a failed restore left behind: orbax gathers a restore's
    array reads and raises the first error only, and every other read that failed would be
    logged ("Future exception was never retrieved", with a TensorStore spec) whenever the
    garbage collector reaches it. Called where a failed restore is reported, so that its one
    line is all a user sees. Only futures holding a read's error are touched. -> how many."""
    import asyncio
    import gc

    retrieved = 0
    for found in gc.get_objects():
        if isinstance(found, asyncio.Future) and found.done() and not found.cancelled():
            error = getattr(found, "_exception", None)  # a peek: .exception() marks it read
            if error is not None and failed_save_or_read(error):
                found.exception()
                retrieved += 1
    return retrieved


def orbax_coroutine(qualname: str) -> bool:
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
