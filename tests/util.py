"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

import jax
import numpy as np

from charjax import cells, model
from charjax.draws import NONE

TINY_TEXT = "the quick brown fox jumps over the lazy dog. a fox is quick; a dog is lazy.\n" * 12


def init_params(key, vocab: int, hidden: int, layers: int = 1, cell: str = "lstm",
                options: cells.Options = cells.PLAIN) -> dict:  # fmt: skip
    """Fresh parameters of a model of these sizes."""
    return model.Spec(vocab, hidden, layers, cell, options).init(key)


def spec_of(params: dict, dtype=None, unroll: int = 1, kernel: str = "auto") -> model.Spec:
    """The spec of a parameter tree the test built (its cell, layers, sizes and options read
    off the tree's names and shapes; the product reads them from a run's Config)."""
    cell = next(name for name in cells.CELLS if name in params)
    layers = [params[cell]] + [params[f"{cell}_{n}"] for n in range(1, len(params))
                               if f"{cell}_{n}" in params]  # fmt: skip
    rounds = sum(layers[0][f"mogrify_{x}"].shape[0] for x in "qr" if f"mogrify_{x}" in layers[0])
    ranks = [layer["mogrify_q_left"].shape[-1] for layer in layers if "mogrify_q_left" in layer]
    vocab, hidden = cells.dims(layers[0])
    dtype = None if dtype in (None, "float32") else dtype
    loop = model.Loop(unroll, kernel == "autodiff")
    return model.Spec(
        vocab, hidden, len(layers), cell, cells.Options(rounds, (ranks or [0])[0]), dtype, loop
    )


def bound(params: dict, **how) -> model.Model:
    """The tree's model (`spec_of`) bound to it."""
    return model.Model(spec_of(params, **how), params)


def forward(params, ids, carry=None, valid=None, dtype=None, *, all_steps=False, draws=NONE,
            unroll=1, kernel="auto"):  # fmt: skip
    """The tree's model called on ids (see `model.CharLSTM`)."""
    net = bound(params, dtype=dtype, unroll=unroll, kernel=kernel)
    return net(ids, carry, valid, all_steps=all_steps, draws=draws)


# `forward` compiled whole: tests that compare its values run it compiled (op by op, each op
# compiles on its own, several times slower)
jit_forward = jax.jit(forward, static_argnames=("dtype", "all_steps", "unroll", "kernel"))


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
