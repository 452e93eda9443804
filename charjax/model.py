"""`CharLSTM`: the Flax module: LSTM(hidden) layers (one = the original model), Dense(vocab) logits.

The softmax of the original's last layer lives in the loss and the sampler, which work on logits
(numerically safer); probabilities are `softmax(logits)`. `forward` is the pure entry point.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax import lstm, lstm_scan
from charjax.errors import CharjaxError


class LSTM(nn.Module):
    """Keras-layout LSTM layer (math in `charjax.lstm`).

    Input: ids int32[B, T] (first layer: one-hot rows gathered) or features float32[T, B, F]
    (a stacked layer: the layer below's outputs, time-major). Returns (final (h, c), outputs
    float32[T, B, H]); with `outputs=False` on ids from a zero state it takes the fastest
    path (the original model's) and returns None for the outputs.
    """

    features: int  # input size: the vocabulary, or the units of the layer below
    hidden: int
    dtype: str | None = None  # matmul operand dtype; None = float32
    loop: lstm_scan.Loop = lstm_scan.PLAIN  # how the time loops run (speed only)

    @nn.compact
    def __call__(
        self, x, carry=None, valid=None, outputs=True, weight_drop=0.0, key=None,
        recurrent_dropout=0.0, recurrent_key=None, first_row=0, length=None,
    ):  # fmt: skip
        gates = 4 * self.hidden
        params = {
            "kernel": self.param("kernel", lstm.kernel_init, (self.features, gates)),
            "recurrent_kernel": self.param(
                "recurrent_kernel", lstm.recurrent_init, (self.hidden, gates)
            ),
            "bias": self.param("bias", lstm.bias_init, (gates,)),
        }
        # Weight-drop: the recurrent kernel masked (one mask per call, i.e. per batch); the
        # scans take it as any kernel, autodiff carries the mask into its gradient.
        recurrent = apply_dropout(params["recurrent_kernel"], weight_drop, key)
        params = {**params, "recurrent_kernel": recurrent}
        # Recurrent dropout: h masked where it enters the recurrent matmul, one mask per row
        # (sequence) for all its steps, drawn only while training (with a key, no `valid`).
        hmask = None
        if recurrent_key is not None and recurrent_dropout > 0 and valid is None:
            rows = x.shape[0] if jnp.issubdtype(x.dtype, jnp.integer) else x.shape[1]
            hmask = row_masks(recurrent_key, first_row, rows, self.hidden, recurrent_dropout)
        if jnp.issubdtype(x.dtype, jnp.integer):
            fastest = carry is None and valid is None and hmask is None and length is None
            if not outputs and fastest:
                return lstm_scan.final_carry(params, x, self.dtype, self.loop), None
            xz = lstm.input_projection(params, x.T)
        else:
            xz = lstm.matmul(x, params["kernel"], self.dtype) + params["bias"]
        return lstm_scan.layer(params, xz, carry, valid, self.dtype, self.loop, hmask, length)


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


def row_masks(key: jax.Array, first_row, rows: int, size: int, rate: float) -> jax.Array:
    """Inverted-dropout masks float32[rows, size] (0 or 1/(1-rate)), row r's drawn from
    fold_in(key, first_row + r): a row's mask depends on its index in the whole batch, not on
    which device holds it, so a data-parallel run draws the masks of a one-device run."""
    index = jnp.asarray(first_row, jnp.uint32) + jnp.arange(rows, dtype=jnp.uint32)
    keep = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i), 1 - rate, (size,)))
    return jnp.where(keep(index), 1.0 / (1.0 - rate), 0.0)


def apply_dropout(x: jax.Array, rate: float, key: jax.Array | None, locked=False) -> jax.Array:
    """Inverted dropout: zero each value with probability `rate`, scale the rest by 1/(1-rate).
    `locked` on time-major x [T, B, F]: one mask per sequence, the same at every step. No key
    (evaluation, sampling) or rate 0: `x` unchanged."""
    if key is None or rate == 0:
        return x
    shape = (1, *x.shape[1:]) if locked and x.ndim == 3 else x.shape
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def layer_name(n: int) -> str:
    """Parameter-tree name of LSTM layer n (0-based): 'lstm', 'lstm_1', ... (the first keeps
    the one-layer model's name, so its checkpoints and the Keras parity test are unchanged)."""
    return CELL if n == 0 else f"{CELL}_{n}"


class CharLSTM(nn.Module):
    """ids int32[B, T] -> (carry, logits).

    `carry` is a tuple with one (h, c) float32[B, H] per layer. Logits are float32[B, V] after
    the last step (the original model), or float32[B, T, V] after every step with `all_steps`.
    With `dropout` > 0 and a `key`, each layer's outputs are dropped out (the stacked layers'
    inputs and the Dense input), with the key folded with the layer index; `locked`: one mask
    per sequence. With `weight_drop` > 0 and a `weight_key` each layer's recurrent kernel is
    masked, the key folded with the layer index (a separate key: in data-parallel training
    every device draws the same weight masks, but its own dropout masks). With
    `recurrent_dropout` > 0 and a `recurrent_key`, each layer's h is masked where it enters its
    recurrent matmul, one mask per sequence (Gal & Ghahramani's variational recurrent dropout),
    drawn by `row_masks` from the key folded with the layer index; `first_row` is the index of
    this batch's first row in the whole batch (a device's shard of it). With `length` (an int32
    scalar in [1, T]) the returned carry is the state after that many steps: the window is
    that long, the steps after it are padding (their logits are computed and change nothing).
    """

    vocab_size: int
    hidden: int = 128
    layers: int = 1
    dtype: str | None = None  # "bfloat16": matmuls in bf16 (GPU/TPU); parameters stay float32
    loop: lstm_scan.Loop = lstm_scan.PLAIN  # how the LSTM time loops run (speed only)

    @nn.compact
    def __call__(self, ids, carry=None, valid=None, *, all_steps=False, dropout=0.0, key=None,
                 locked=False, weight_drop=0.0, weight_key=None,
                 recurrent_dropout=0.0, recurrent_key=None, first_row=0,
                 length=None):  # fmt: skip
        carries = carry if carry is not None else (None,) * self.layers
        fold = lambda k, n: None if k is None else jax.random.fold_in(k, n)  # noqa: E731
        x, new = ids, []
        for n in range(self.layers):
            top = n == self.layers - 1
            features = self.vocab_size if n == 0 else self.hidden
            layer = LSTM(features, self.hidden, self.dtype, self.loop, name=layer_name(n))
            layer_carry, outputs = layer(
                x, carries[n], valid, all_steps or not top, weight_drop, fold(weight_key, n),
                recurrent_dropout, fold(recurrent_key, n), first_row, length,
            )  # fmt: skip
            new.append(layer_carry)
            x = layer_carry[0] if top and not all_steps else outputs
            x = apply_dropout(x, dropout, fold(key, n), locked)
        logits = Dense(self.vocab_size, self.dtype, name="dense")(x)
        if all_steps:
            logits = jnp.swapaxes(logits, 0, 1)  # [T, B, V] -> [B, T, V]
        return tuple(new), logits


# The recurrent cells a model can stack, by parameter-tree name: each module gives its layer's
# `dims(params)` and `zero_state(batch, hidden)`. Another cell adds its module here and a layer.
CELLS = {"lstm": lstm}
CELL = "lstm"


def shape_of(params: dict) -> tuple[int, int]:
    """(vocab_size, hidden) read off a parameter tree (its first layer, asked of its cell)."""
    return CELLS[CELL].dims(params[layer_name(0)])


def layers_of(params: dict) -> int:
    """Number of stacked recurrent layers in a parameter tree."""
    return sum(1 for name in params if name.startswith(CELL))


def zero_carry(batch: int, hidden: int, layers: int) -> tuple:
    """The state every layer starts from: one cell state per layer, for `batch` rows."""
    return (CELLS[CELL].zero_state(batch, hidden),) * layers


def init_params(key: jax.Array, vocab_size: int, hidden: int, layers: int = 1) -> dict:
    """Fresh parameters with Keras' initialisers: {'lstm': {...}, ['lstm_1': ...,] 'dense': ...}."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return CharLSTM(vocab_size, hidden, layers).init(key, ids)["params"]


def forward(
    params: dict,
    ids: jax.Array,
    carry=None,
    valid=None,
    dtype: str | None = None,
    *,
    all_steps: bool = False,
    dropout: float = 0.0,
    key: jax.Array | None = None,
    unroll: int = 0,
    kernel: str = "auto",
    locked: bool = False,
    weight_drop: float = 0.0,
    weight_key: jax.Array | None = None,
    recurrent_dropout: float = 0.0,
    recurrent_key: jax.Array | None = None,
    first_row=0,
    length=None,
):
    """Pure forward pass: ids int[B, T] -> (carry, logits); see `CharLSTM`. Ids of any integer
    dtype (the corpus keeps them narrow) are widened to int32 here, inside the jitted caller.
    `unroll`: time steps per LSTM loop iteration, 0 = the platform's (`default_unroll`);
    `kernel`: the training loops' "xla" scans or "pallas" fused kernels, "auto" by platform."""
    dtype = None if dtype in (None, "float32") else dtype
    loop = lstm_scan.Loop(unroll or default_unroll(), fused_kernel(kernel))
    if jnp.issubdtype(ids.dtype, jnp.integer):
        ids = ids.astype(jnp.int32)
    module = CharLSTM(*shape_of(params), layers_of(params), dtype, loop)
    return module.apply(
        {"params": params}, ids, carry, valid, all_steps=all_steps, dropout=dropout, key=key,
        locked=locked, weight_drop=weight_drop, weight_key=weight_key,
        recurrent_dropout=recurrent_dropout, recurrent_key=recurrent_key, first_row=first_row,
        length=length,
    )  # fmt: skip


def default_unroll() -> int:
    """Time steps per LSTM loop iteration where `--unroll` is 0: 1 on CPU (a loop iteration
    costs nothing there, and a longer body compiles slower), 10 on GPU and TPU, where each
    iteration costs microseconds of control (10 halved an epoch on an H200, issue 15)."""
    return 1 if jax.default_backend() == "cpu" else 10


def fused_kernel(kernel: str) -> bool:
    """Whether `--lstm-kernel` (auto, xla, pallas) takes the fused Pallas loops. auto: the XLA
    scans on every platform (the fused kernels measured slower on an H200, BENCHMARKS.md)."""
    fused = kernel == "pallas"
    if fused and jax.default_backend() not in ("gpu", "cpu"):
        raise CharjaxError(
            f"--lstm-kernel pallas runs on a GPU (and interpreted on CPU), not on "
            f"{jax.default_backend()}; use --lstm-kernel xla"
        )
    return fused


def num_params(params: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
