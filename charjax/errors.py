"""The one exception type that command-line entry points turn into a one-line message, and
`out_of_memory`, jax's RESOURCE_EXHAUSTED in words."""

from charjax import orbax_errors


class CharjaxError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class Interrupted(CharjaxError):
    """The user stopped training (Ctrl-C); the message says what was saved and how to resume."""


# the sizes each command's flags set; a command not named reads a model trained before
SIZE_FLAGS = {
    "charjax-train": "lower --hidden, --layers, --batch-size or --maxlen",
    "charjax-sample": "lower --num-samples or --length, or sample on a device with more memory",
}


def out_of_memory(error: BaseException, prog: str) -> CharjaxError | None:
    """One line for jax's RESOURCE_EXHAUSTED (`jax.errors.JaxRuntimeError`, XlaRuntimeError
    before it): a model or batch that does not fit the device, with the memory it asked for
    and the flags of `prog` that size it; None for any other error."""
    if isinstance(error, CharjaxError) or orbax_errors.OUT_OF_MEMORY not in str(error):
        return None
    asked = orbax_errors.asked_bytes(error)
    size = f" allocating {asked / 1e9:,.1f} GB" if asked else ""
    fix = SIZE_FLAGS.get(
        prog,
        "the model's size was set by its training's --hidden and --layers: use a device with "
        "more memory",
    )
    return CharjaxError(f"out of memory{size} (the model or batch does not fit the device); {fix}")
