"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

import jax
import numpy as np

from charjax import model

TINY_TEXT = "the quick brown fox jumps over the lazy dog. a fox is quick; a dog is lazy.\n" * 12


# `model.forward` compiled whole: tests that compare its values run it compiled (op by op, each
# op compiles on its own, several times slower)
jit_forward = jax.jit(model.forward, static_argnames=("dtype", "all_steps", "unroll", "kernel"))


def quiet(*args) -> None:
    """A log that prints nothing."""


def same_trees(a, b) -> bool:
    """Whether two pytrees are bit-identical, leaf by leaf."""
    equal = jax.tree.map(lambda x, y: bool((np.asarray(x) == np.asarray(y)).all()), a, b)
    return all(jax.tree.leaves(equal))


def loss_of(result):
    """(state, metrics) of a train step -> (state, its loss)."""
    state, metrics = result
    return state, metrics["loss"]


def orbax_like(name: str, error: str = "See full TensorStore details: ..."):
    """A coroutine function `name` that raises Exception(`error`), and whose code says it is
    defined in orbax's files (as the leftovers of a failed restore are)."""
    namespace = {}
    source = f"async def {name}():\n    raise Exception({error!r})\n"
    exec(compile(source, "/site-packages/orbax/checkpoint/_src/x.py", "exec"), namespace)
    return namespace[name]
