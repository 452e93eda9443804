"""The one exception type that command-line entry points turn into a one-line message,
`os_error`, the OS error behind a failure that a library wrapped, and `out_of_memory`, jax's
RESOURCE_EXHAUSTED in words."""

import os
import re


class CharjaxError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class Interrupted(CharjaxError):
    """The user stopped training (Ctrl-C); the message says what was saved and how to resume."""


def os_error(error: Exception) -> str | None:
    """The OS error behind `error`, in words (orbax and TensorStore wrap it: in the chain of
    causes, or as "os_error_code='N'" in a message), or None when it was not an OS error."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        code = re.search(r"os_error_code='(\d+)'", str(seen))
        if code:
            return os.strerror(int(code.group(1)))
        seen = seen.__cause__ or seen.__context__
    return None


# the sizes each command's flags set; a command not named reads a model trained before
SIZE_FLAGS = {
    "charjax-train": "lower --hidden, --layers, --batch-size or --maxlen",
    "charjax-sample": "lower --num-samples or --length, or sample on a device with more memory",
}
_ASKED = re.compile(r"allocat\w* (\d+) bytes")  # "Out of memory (while trying to) allocat..."


def out_of_memory(error: BaseException, prog: str) -> CharjaxError | None:
    """One line for jax's RESOURCE_EXHAUSTED (`jax.errors.JaxRuntimeError`, XlaRuntimeError
    before it): a model or batch that does not fit the device, with the memory it asked for
    and the flags of `prog` that size it; None for any other error."""
    text = str(error)
    if isinstance(error, CharjaxError) or "RESOURCE_EXHAUSTED" not in text:
        return None
    asked = _ASKED.search(text)
    size = f" allocating {int(asked.group(1)) / 1e9:,.1f} GB" if asked else ""
    fix = SIZE_FLAGS.get(
        prog,
        "the model's size was set by its training's --hidden and --layers: use a device with "
        "more memory",
    )
    return CharjaxError(f"out of memory{size} (the model or batch does not fit the device); {fix}")
