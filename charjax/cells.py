"""The recurrent cells a model can stack (`--cell`), in one registry: each cell's parameters
(shapes and initialisers), its time-parallel input part, one time step, and its options read
back from a parameter tree. Every cell keeps an LSTM's state (h, c), each float32[B, H], and
its layer's parameters hold `kernel` [F, 4H], `recurrent_kernel` [H, 4H] and `bias` [4H] in
Keras' layout (gates i, f, c, o), so weight-drop, recurrent dropout and the export treat them
alike.

- `lstm`: the Keras LSTM (`charjax.lstm`; trained through the hand-written backward of
  `lstm_scan`).
- `lnlstm`: layer normalisation inside the cell (Ba, Kiros & Hinton 2016), as in Ha et al.'s
  HyperNetworks LN-LSTM: each gate's H pre-activations of the input and of the recurrent
  projection normalised separately (one gain per unit, no shift: `bias` shifts), and the cell
  state normalised (gain and shift) before its tanh.
- `mogrifier`: the Mogrifier LSTM (Melis, Kočiský & Blunsom 2019): before each LSTM step the
  input and the previous h gate each other for `rounds` rounds (odd rounds x *= 2 sigmoid(h Q),
  even rounds h *= 2 sigmoid(x R)). For the first layer x is one-hot, so its rounds are gathers
  of Q's and R's rows and a scalar per row; a stacked layer's Q and R may be low-rank
  products (`rank`), as in the paper.

The cells other than `lstm` train through autodiff of `cell_scan`'s scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from charjax import lstm

LN_EPS = 1e-5  # layer normalisation's epsilon, inside the square root


class Options(NamedTuple):
    """A cell's options beside its size (the mogrifier's): what `--mogrify-rounds` and
    `--mogrify-rank` set, and what `options_of` reads back from a trained tree."""

    rounds: int = 0  # mogrifier: rounds of mutual gating (0 for the other cells)
    rank: int = 0  # mogrifier: rank of a stacked layer's Q and R; 0 = full

    @classmethod
    def of(cls, cfg) -> Options:
        """The options a `Config` sets for its cell."""
        if cfg.cell != "mogrifier":
            return cls()
        return cls(cfg.mogrify_rounds, cfg.mogrify_rank)


class Cell(NamedTuple):
    """A registry entry. `shapes(features, hidden, ids, options)` -> {name: (initialiser,
    shape)} of one layer (`ids`: the layer reads char ids, else the features of the layer
    below); `inputs(params, x, dtype)`: the time-parallel part, x int32[T, B] ids or
    float32[T, B, F] -> a pytree of time-major per-step inputs; `step(params, (h, c), inputs_t,
    dtype, hmask)` -> the new (h, c), with `hmask` float32[B, H] or None scaling the h fed back
    (recurrent dropout)."""

    shapes: Callable
    inputs: Callable
    step: Callable


def _lstm_shapes(features: int, hidden: int) -> dict:
    return {
        "kernel": (lstm.kernel_init, (features, 4 * hidden)),
        "recurrent_kernel": (lstm.recurrent_init, (hidden, 4 * hidden)),
        "bias": (lstm.bias_init, (4 * hidden,)),
    }


def _projected(params: dict, x: jax.Array, dtype) -> jax.Array:
    """x @ kernel (ids: rows of the kernel gathered) -> float32[T, B, 4H], no bias."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return lstm.rows(params["kernel"], x)
    return lstm.matmul(x, params["kernel"], dtype)


def _update(z: jax.Array, c: jax.Array, cell_norm=None) -> tuple:
    """The LSTM update from pre-activations z [B, 4H] (gates i, f, c, o) and c [B, H] -> (h, c);
    `cell_norm` (optional) is applied to c before its tanh."""
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c if cell_norm is None else cell_norm(c)), c


def _masked(h: jax.Array, hmask) -> jax.Array:
    return h if hmask is None else h * hmask


# lstm: the registry's form of `charjax.lstm` (the model trains it through `lstm_scan`)


def _lstm_inputs(params, x, dtype):
    return _projected(params, x, dtype) + params["bias"]


def _lstm_step(params, carry, xz, dtype=None, hmask=None):
    return lstm.cell_with_gates(params["recurrent_kernel"], carry, xz, dtype, hmask)[0]


LSTM = Cell(lambda f, h, ids, options: _lstm_shapes(f, h), _lstm_inputs, _lstm_step)


# lnlstm


def normalise(x: jax.Array) -> jax.Array:
    """x with zero mean and unit variance over its last axis (layer normalisation, no gain)."""
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    return centred * jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + LN_EPS)


def gate_norm(z: jax.Array, gain: jax.Array) -> jax.Array:
    """z float32[..., 4H] with each gate's H values normalised separately, times gain [4H]."""
    hidden = z.shape[-1] // 4
    return normalise(z.reshape(*z.shape[:-1], 4, hidden)).reshape(z.shape) * gain


def _ln_shapes(features, hidden, ids, options):
    ones = jax.nn.initializers.ones
    return {
        **_lstm_shapes(features, hidden),
        "input_gain": (ones, (4 * hidden,)),
        "recurrent_gain": (ones, (4 * hidden,)),
        "cell_gain": (ones, (hidden,)),
        "cell_bias": (jax.nn.initializers.zeros, (hidden,)),
    }


def _ln_inputs(params, x, dtype):
    """LN(x @ kernel) + bias -> float32[T, B, 4H]; for ids the kernel's rows are normalised once
    (a one-hot x selects a row: normalising the row is normalising x @ kernel)."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        table = gate_norm(params["kernel"], params["input_gain"])
        return lstm.rows(table, x) + params["bias"]
    return gate_norm(_projected(params, x, dtype), params["input_gain"]) + params["bias"]


def _ln_step(params, carry, xz, dtype=None, hmask=None):
    h, c = carry
    recurrent = lstm.matmul(_masked(h, hmask), params["recurrent_kernel"], dtype)
    z = xz + gate_norm(recurrent, params["recurrent_gain"])
    return _update(z, c, lambda c: normalise(c) * params["cell_gain"] + params["cell_bias"])


LNLSTM = Cell(_ln_shapes, _ln_inputs, _ln_step)


# mogrifier


def _stacked(key: jax.Array, shape: tuple[int, int, int], dtype=jnp.float32) -> jax.Array:
    """Glorot-uniform per matrix of a stack [n, fan_in, fan_out] (Keras' rule for each
    matrix). Drawn flat and reshaped: the same values as drawing the stack's shape, whose
    rank-3 random bits take XLA on CPU several times longer to compile."""
    _, fan_in, fan_out = shape
    variance = jnp.array(2 / (fan_in + fan_out), dtype)
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, -1)
    return flat.reshape(shape) * jnp.sqrt(3 * variance)


def _rounds(rounds: int) -> tuple[int, int]:
    """(rounds gating x, rounds gating h): rounds 1, 3, 5, ... gate x; 2, 4, ... gate h."""
    return (rounds + 1) // 2, rounds // 2


def _mogrifier_shapes(features, hidden, ids, options):
    """Q [nq, H, F] (h -> a gate on x) and R [nr, F, H] (x -> a gate on h); for a stacked layer
    with a rank K, each as two factors [., H, K] @ [., K, F] (and [., F, K] @ [., K, H])."""
    shapes = _lstm_shapes(features, hidden)
    for name, n, fan_in, fan_out in zip(
        ("q", "r"),
        _rounds(options.rounds),
        (hidden, features),
        (features, hidden),
        strict=True,
    ):
        if n == 0:
            continue
        if options.rank and not ids:
            shapes[f"mogrify_{name}_left"] = (_stacked, (n, fan_in, options.rank))
            shapes[f"mogrify_{name}_right"] = (_stacked, (n, options.rank, fan_out))
        else:
            shapes[f"mogrify_{name}"] = (_stacked, (n, fan_in, fan_out))
    return shapes


def _gate_matrix(params: dict, name: str, k: int, x: jax.Array, dtype) -> jax.Array:
    """x @ (round k's matrix `name`: q or r), full or as its two low-rank factors."""
    if f"mogrify_{name}" in params:
        return lstm.matmul(x, params[f"mogrify_{name}"][k], dtype)
    left = lstm.matmul(x, params[f"mogrify_{name}_left"][k], dtype)
    return lstm.matmul(left, params[f"mogrify_{name}_right"][k], dtype)


def _mogrifier_inputs(params, x, dtype):
    """ids: per step the kernel's row xw [T, B, 4H] and, per round, Q's column q [T, B, nq, H]
    and R's row r [T, B, nr, H] of each char; features: x itself."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        return {"x": x}
    inputs = {"xw": lstm.rows(params["kernel"], x)}
    for name, axes in (("q", (2, 0, 1)), ("r", (1, 0, 2))):
        if f"mogrify_{name}" in params:  # [n, H, V] or [n, V, H] -> a table [V, n * H]
            matrix = params[f"mogrify_{name}"].transpose(axes)
            table = matrix.reshape(matrix.shape[0], -1)
            inputs[name] = lstm.rows(table, x).reshape(*x.shape, -1, matrix.shape[-1])
    return inputs


def _mogrifier_step(params, carry, inputs, dtype=None, hmask=None):
    """The rounds (x and the h fed in gate each other), then the LSTM step on both."""
    h, c = carry
    gated = _masked(h, hmask)
    rounds = sum(_rounds_of(params))
    if "x" in inputs:  # a stacked layer: x [B, F] and h gate each other through matmuls
        x = inputs["x"]
        for k in range(rounds):
            if k % 2 == 0:
                x = x * 2 * jax.nn.sigmoid(_gate_matrix(params, "q", k // 2, gated, dtype))
            else:
                gated = gated * 2 * jax.nn.sigmoid(_gate_matrix(params, "r", k // 2, x, dtype))
        xz = lstm.matmul(x, params["kernel"], dtype)
    else:  # the first layer: x = scale * one-hot(id), its rounds are gathered rows (float32
        # elementwise products: no matmul for --dtype to cast)
        scale = jnp.ones_like(gated[:, :1])  # [B, 1]
        for k in range(rounds):
            if k % 2 == 0:
                q = inputs["q"][:, k // 2]
                scale = scale * 2 * jax.nn.sigmoid((gated * q).sum(-1, keepdims=True))
            else:
                gated = gated * 2 * jax.nn.sigmoid(scale * inputs["r"][:, k // 2])
        xz = scale * inputs["xw"]
    z = xz + params["bias"] + lstm.matmul(gated, params["recurrent_kernel"], dtype)
    return _update(z, c)


def _rounds_of(params: dict) -> tuple[int, int]:
    """(rounds gating x, rounds gating h) of a mogrifier layer's parameters."""
    counts = []
    for name in ("q", "r"):
        found = params.get(f"mogrify_{name}", params.get(f"mogrify_{name}_left"))
        counts.append(0 if found is None else found.shape[0])
    return counts[0], counts[1]


MOGRIFIER = Cell(_mogrifier_shapes, _mogrifier_inputs, _mogrifier_step)

CELLS = {"lstm": LSTM, "lnlstm": LNLSTM, "mogrifier": MOGRIFIER}


PLAIN = Options()  # the options of a cell without any


def options_of(layers: list[dict]) -> Options:
    """The options a tree's layers (their parameter dicts, bottom first) were built with."""
    rank = 0
    for layer in layers[1:]:
        if "mogrify_q_left" in layer:
            rank = layer["mogrify_q_left"].shape[-1]
    return Options(sum(_rounds_of(layers[0])), rank)


def zero_carry_like(inputs, hidden: int) -> tuple:
    """Zero (h, c) float32[B, H] from a cell's per-step inputs (time-major, [T, B, ...]):
    derived from the data, not built from shapes, so that inside `shard_map` it has the same
    per-device type as the carries the scan computes."""
    first = jax.tree.leaves(inputs)[0][0]  # [B, ...]
    column = jnp.zeros_like(first.reshape(first.shape[0], -1)[:, :1], jnp.float32)
    zeros = column + jnp.zeros((hidden,), jnp.float32)
    return zeros, zeros


def scan(cell: Cell, params: dict, x: jax.Array, carry=None, valid=None, dtype=None,
         unroll: int = 1, hmask=None, length=None):  # fmt: skip
    """A layer of `cell` over x (int32[T, B] ids or float32[T, B, F]) -> (final (h, c), hs
    float32[T, B, H]). `valid` bool[T]: at the other steps the carry passes through unchanged;
    `hmask` float32[B, H]: recurrent dropout; `length` int32 scalar in [1, T]: the final carry
    is the state after that many steps. Differentiated by autodiff."""
    inputs = cell.inputs(params, x, dtype)
    hidden = params["recurrent_kernel"].shape[0]
    if carry is None:
        carry = zero_carry_like(inputs, hidden)
    if valid is None:
        valid = jnp.ones(x.shape[:1], bool)

    def step(carry, inputs_valid):
        inputs_t, valid_t = inputs_valid
        new = cell.step(params, carry, inputs_t, dtype, hmask)
        new = jax.tree.map(lambda n, o: jnp.where(valid_t, n, o), new, carry)
        return new, new if length is not None else new[0]

    carry, emitted = jax.lax.scan(step, carry, (inputs, valid), unroll=unroll)
    if length is None:
        return carry, emitted
    hs, cs = emitted
    return tuple(jax.lax.dynamic_index_in_dim(x, length - 1, keepdims=False) for x in (hs, cs)), hs
