"""The one exception type that command-line entry points turn into a one-line message, and
`os_error`, the OS error behind a failure that a library wrapped."""

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
