"""The one exception type that command-line entry points turn into a one-line message."""


class CharjaxError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class Interrupted(CharjaxError):
    """The user stopped training (Ctrl-C); the message says what was saved and how to resume."""
