"""`CharLSTM`: the Flax module: LSTM(hidden) layers (one = the original model), Dense(vocab) logits.

The softmax of the original's last layer lives in the loss and the sampler, which work on logits
(numerically safer); probabilities are `softmax(logits)`. `forward` is the pure entry point.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax import cells, lstm, scans
from charjax.draws import NONE, Draws
from charjax.errors import CharjaxError


class Loop(NamedTuple):
    """How the time loops run (speed only: the same math). `unroll`: time steps per loop
    iteration (a GPU loop iteration costs microseconds of control); `autodiff`: an LSTM-shaped
    cell trained through autodiff of the plain scan instead of the fast scan (for comparison)."""

    unroll: int = 1
    autodiff: bool = False


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


def layer_name(n: int, cell: str = "lstm") -> str:
    """Parameter-tree name of layer n (0-based) of a `cell`: 'lstm', 'lstm_1', ... (the first
    keeps the one-layer model's name, so its checkpoints and the Keras parity test are
    unchanged); 'lnlstm', 'lnlstm_1', ... for another cell: a tree names its cell."""
    return cell if n == 0 else f"{cell}_{n}"


class CharLSTM(nn.Module):
    """ids int32[B, T] -> (carry, logits).

    `carry` is a tuple with one (h, c) float32[B, H] per layer. Logits are float32[B, T, V]
    after every step with `all_steps`, else float32[B, V] after the last step (the original
    model). `cell` names the layers' cell (`charjax.cells`; `options` its options). `draws`
    (training): each layer takes its own (`Draws.layer`, the keys folded with the layer's
    index): dropout on its outputs (the stacked layers' inputs and the Dense input),
    weight-drop on its recurrent kernel, recurrent dropout on the h fed back, and with a window
    length the returned carry is the state after that many steps (the steps after it are
    padding: their logits are computed and change nothing).
    """

    vocab_size: int
    hidden: int = 128
    layers: int = 1
    dtype: str | None = None  # "bfloat16": matmuls in bf16 (GPU/TPU); parameters stay float32
    loop: Loop = Loop()  # how the LSTM time loops run (speed only)
    cell: str = "lstm"
    options: cells.Options = cells.PLAIN

    @nn.compact
    def __call__(self, ids, carry=None, valid=None, *, all_steps=False, draws: Draws = NONE):
        carries = carry if carry is not None else (None,) * self.layers
        x, new = ids, []
        for n in range(self.layers):
            top = n == self.layers - 1
            features = self.vocab_size if n == 0 else self.hidden
            name = layer_name(n, self.cell)
            layer = Layer(self.cell, features, self.hidden, self.options, self.dtype, self.loop,
                          name=name)  # fmt: skip
            layer_draws = draws.layer(n)
            layer_carry, outputs = layer(x, carries[n], valid, all_steps or not top, layer_draws)
            new.append(layer_carry)
            x = layer_carry[0] if top and not all_steps else outputs
            x = layer_draws.outputs(x)
        logits = Dense(self.vocab_size, self.dtype, name="dense")(x)
        if all_steps:
            logits = jnp.swapaxes(logits, 0, 1)  # [T, B, V] -> [B, T, V]
        return tuple(new), logits


def cell_of(params: dict) -> str:
    """The cell a parameter tree's layers are made of (its first layer is named after it)."""
    for name in cells.CELLS:
        if name in params:
            return name
    raise CharjaxError(f"no recurrent layer in a parameter tree of {sorted(params)}")


def layers_of(params: dict) -> int:
    """Number of stacked recurrent layers in a parameter tree."""
    cell = cell_of(params)
    return sum(1 for name in params if name == cell or name.startswith(cell + "_"))


def options_of(params: dict) -> cells.Options:
    """The cell options (`cells.Options`) a parameter tree was built with."""
    cell = cell_of(params)
    return cells.options_of([params[layer_name(n, cell)] for n in range(layers_of(params))])


def shape_of(params: dict) -> tuple[int, int]:
    """(vocab_size, hidden) read off a parameter tree (its first layer's kernels)."""
    return cells.dims(params[cell_of(params)])


def zero_carry(batch: int, hidden: int, layers: int) -> tuple:
    """The state every layer starts from: zero (h, c) float32[batch, hidden] per layer (every
    cell keeps an LSTM's state)."""
    return (cells.zero_state(jnp.zeros((batch, 1)), hidden),) * layers


def init_params(key: jax.Array, vocab_size: int, hidden: int, layers: int = 1,
                cell: str = "lstm", options: cells.Options = cells.PLAIN) -> dict:  # fmt: skip
    """Fresh parameters: {'lstm': {...}, ['lstm_1': ...,] 'dense': ...} (Keras' initialisers;
    another cell's layers are named after it)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    module = CharLSTM(vocab_size, hidden, layers, cell=cell, options=options)
    return module.init(key, ids)["params"]


def init_params_of(key: jax.Array, vocab_size: int, cfg) -> dict:
    """Fresh parameters of the model a `Config` describes (size, layers, cell and its options)."""
    options = cells.Options.of(cfg)
    return init_params(key, vocab_size, cfg.hidden, cfg.layers, cfg.cell, options)


def forward(
    params: dict,
    ids: jax.Array,
    carry=None,
    valid=None,
    dtype: str | None = None,
    *,
    all_steps: bool = False,
    draws: Draws = NONE,
    unroll: int = 0,
    kernel: str = "auto",
):
    """Pure forward pass: ids int[B, T] -> (carry, logits); see `CharLSTM`. Ids of any integer
    dtype (the corpus keeps them narrow) are widened to int32 here, inside the jitted caller.
    `unroll`: time steps per LSTM loop iteration, 0 = the platform's (`default_unroll`);
    `kernel`: "autodiff" trains an LSTM-shaped cell through autodiff of the plain scan, any
    other value ("auto", "xla") through the fast scan (`Loop`)."""
    dtype = None if dtype in (None, "float32") else dtype
    loop = Loop(unroll or default_unroll(), kernel == "autodiff")
    if jnp.issubdtype(ids.dtype, jnp.integer):
        ids = ids.astype(jnp.int32)
    cell, options = cell_of(params), options_of(params)
    module = CharLSTM(*shape_of(params), layers_of(params), dtype, loop, cell, options)
    return module.apply({"params": params}, ids, carry, valid, all_steps=all_steps, draws=draws)


def default_unroll() -> int:
    """Time steps per LSTM loop iteration where `--unroll` is 0: 1 on CPU (a loop iteration
    costs nothing there, and a longer body compiles slower), 10 on GPU and TPU, where each
    iteration costs microseconds of control (10 halved an epoch on an H200)."""
    return 1 if jax.default_backend() == "cpu" else 10


def num_params(params: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
