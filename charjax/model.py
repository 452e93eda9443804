"""The model: `Spec` (what it is and how it runs, built once from a `Config` or a checkpoint's
record), `Model` (a spec bound to its parameters: the function train, sample, score, dynamic
evaluation and export call), and the Flax modules: `CharLSTM` stacks `Layer`s of a registered
cell (`charjax.cells`) under a Dense(vocab) of logits.

The softmax of the original's last layer lives in the loss and the sampler, which work on logits
(numerically safer); probabilities are `softmax(logits)`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from charjax import cells, lstm, scans
from charjax.draws import NONE, Draws


class Loop(NamedTuple):
    """How the time loops run (speed only: the same math). `unroll`: time steps per loop
    iteration (a GPU loop iteration costs microseconds of control); `autodiff`: an LSTM-shaped
    cell trained through autodiff of the plain scan instead of the fast scan (for comparison)."""

    unroll: int = 1
    autodiff: bool = False


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model, built once: its architecture (vocabulary, hidden units, layers, cell and the
    cell's options) and how it runs (matmul dtype, loops). Hashable: jitted functions take it
    as a constant (`Model` carries it as static data)."""

    vocab: int
    hidden: int = 128
    layers: int = 1
    cell: str = "lstm"
    options: cells.Options = cells.PLAIN
    dtype: str | None = None  # "bfloat16": matmuls in bf16 (GPU/TPU); parameters stay float32
    loop: Loop = Loop()

    @classmethod
    def of(cls, cfg, vocab: int) -> Spec:
        """The model a `Config` (a run's, or a checkpoint's record) describes over `vocab`
        chars; `--unroll 0` takes the platform's (`default_unroll`)."""
        dtype = None if cfg.dtype == "float32" else cfg.dtype
        loop = Loop(cfg.unroll or default_unroll(), cfg.lstm_kernel == "autodiff")
        return cls(vocab, cfg.hidden, cfg.layers, cfg.cell, cells.Options.of(cfg), dtype, loop)

    def init(self, key: jax.Array) -> dict:
        """Fresh parameters: {'lstm': {...}, ['lstm_1': ...,] 'dense': ...} (Keras'
        initialisers; another cell's layers are named after it: `layer_names`)."""
        return CharLSTM(self).init(key, jnp.zeros((1, 1), jnp.int32))["params"]

    def layer_names(self) -> list[str]:
        """The recurrent layers' names in a parameter tree, bottom first: 'lstm', 'lstm_1', ...
        (the first keeps the one-layer model's name, so its checkpoints and the Keras parity
        test are unchanged); 'lnlstm', 'lnlstm_1', ... for another cell: a tree names its cell."""
        return [self.cell if n == 0 else f"{self.cell}_{n}" for n in range(self.layers)]

    def zero_carry(self, batch: int) -> tuple:
        """The state every layer starts from (`zero_carry`)."""
        return zero_carry(batch, self.hidden, self.layers)


@struct.dataclass
class Model:
    """A `Spec` bound to its parameters (a pytree: the params are its leaves, the spec static).
    Called: ids int[B, T] -> (carry, logits), see `CharLSTM`; ids of any integer dtype (the
    corpus keeps them narrow) are widened to int32 here, inside the jitted caller."""

    spec: Spec = struct.field(pytree_node=False)
    params: dict

    def __call__(self, ids, carry=None, valid=None, *, all_steps=False, draws: Draws = NONE):
        if jnp.issubdtype(ids.dtype, jnp.integer):
            ids = ids.astype(jnp.int32)
        module = CharLSTM(self.spec)
        return module.apply({"params": self.params}, ids, carry, valid, all_steps=all_steps,
                            draws=draws)  # fmt: skip

    def step(self, ids: jax.Array, carry: tuple) -> tuple:
        """The sampler's step: one char id per row int32[B] read on from `carry` -> (logits
        float32[B, V], the carry after it)."""
        carry, logits = self(ids[:, None], carry)
        return logits, carry


class Dense(nn.Module):
    """Keras' Dense without activation: h @ kernel + bias (glorot-uniform kernel, zero bias)."""

    features: int
    dtype: str | None = None

    @nn.compact
    def __call__(self, h):
        kernel = self.param(
            "kernel", nn.initializers.glorot_uniform(), (h.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return lstm.matmul(h, kernel, self.dtype) + bias


class Layer(nn.Module):
    """A layer of a registered cell (`charjax.cells`): ids int32[B, T] (the first layer: one-hot
    rows gathered) or features float32[T, B, F] (the layer below's outputs, time-major) ->
    (final (h, c), outputs float32[T, B, H], None with `outputs=False` where the scan may skip
    them). Training (no `valid`) takes the fast scan for an LSTM-shaped cell (`scans.fast`),
    else the plain scan; `draws` (`Draws.layer`): weight-drop, recurrent dropout and the
    window length, only while training."""

    cell: str
    features: int  # input size: the vocabulary, or the units of the layer below
    hidden: int
    options: cells.Options = cells.PLAIN
    dtype: str | None = None  # matmul operand dtype; None = float32
    loop: Loop = Loop()  # how the time loops run (speed only)

    @nn.compact
    def __call__(self, x, carry=None, valid=None, outputs=True, draws: Draws = NONE):
        cell = cells.CELLS[self.cell]
        ids = jnp.issubdtype(x.dtype, jnp.integer)
        shapes = cell.shapes(self.features, self.hidden, ids, self.options)
        params = {name: self.param(name, init, shape) for name, (init, shape) in shapes.items()}
        # Weight-drop: the recurrent kernel masked (one mask per call, i.e. per batch); the
        # gradient carries the mask. Recurrent dropout: one mask per row (`draws.h_mask`).
        params = {**params, "recurrent_kernel": draws.recurrent_kernel(params["recurrent_kernel"])}
        x = x.T if ids else x  # time-major
        if valid is not None:  # inference: left-padded windows, nothing drawn
            return scans.plain(cell, params, x, carry, valid, self.dtype, self.loop.unroll)
        hmask, length = draws.h_mask(x.shape[1], self.hidden), draws.length
        if cell.update is None or self.loop.autodiff:
            return scans.plain(cell, params, x, carry, None, self.dtype, self.loop.unroll, hmask,
                               length)  # fmt: skip
        return scans.fast(cell, params, x, carry, self.dtype, self.loop.unroll, hmask, length,
                          outputs)  # fmt: skip


class CharLSTM(nn.Module):
    """The `spec`'s model: ids int32[B, T] -> (carry, logits).

    `carry` is a tuple with one (h, c) float32[B, H] per layer. Logits are float32[B, T, V]
    after every step with `all_steps`, else float32[B, V] after the last step (the original
    model). `draws`
    (training): each layer takes its own (`Draws.layer`, the keys folded with the layer's
    index): dropout on its outputs (the stacked layers' inputs and the Dense input),
    weight-drop on its recurrent kernel, recurrent dropout on the h fed back, and with a window
    length the returned carry is the state after that many steps (the steps after it are
    padding: their logits are computed and change nothing).
    """

    spec: Spec

    @nn.compact
    def __call__(self, ids, carry=None, valid=None, *, all_steps=False, draws: Draws = NONE):
        spec = self.spec
        carries = carry if carry is not None else (None,) * spec.layers
        x, new = ids, []
        for n, name in enumerate(spec.layer_names()):
            top = n == spec.layers - 1
            features = spec.vocab if n == 0 else spec.hidden
            layer = Layer(spec.cell, features, spec.hidden, spec.options, spec.dtype, spec.loop,
                          name=name)  # fmt: skip
            layer_draws = draws.layer(n)
            layer_carry, outputs = layer(x, carries[n], valid, all_steps or not top, layer_draws)
            new.append(layer_carry)
            x = layer_carry[0] if top and not all_steps else outputs
            x = layer_draws.outputs(x)
        logits = Dense(spec.vocab, spec.dtype, name="dense")(x)
        if all_steps:
            logits = jnp.swapaxes(logits, 0, 1)  # [T, B, V] -> [B, T, V]
        return tuple(new), logits


def zero_carry(batch: int, hidden: int, layers: int) -> tuple:
    """Zero (h, c) float32[batch, hidden] per layer: each cell's zero state (`cells.zero_state`)."""
    return (cells.zero_state(jnp.zeros((batch, 1)), hidden),) * layers


def default_unroll() -> int:
    """Time steps per LSTM loop iteration where `--unroll` is 0: 1 on CPU (unrolled sampling
    and validation loops measured no faster there, and compile slower), 10 on GPU and TPU,
    where each iteration costs microseconds of control (an epoch of the original recipe on an
    H200: 1.21 s at 10, against 1.76 s at 1; code of 2026-11-27, jax 0.11.2 (CUDA 13),
    BENCHMARKS.md)."""
    return 1 if jax.default_backend() == "cpu" else 10


def num_params(params: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
