"""The recurrent cells a model can stack (`--cell`), in one registry: each cell's parameters
(shapes and initialisers), its time-parallel input part, one time step, its title and export
format. Every cell keeps an LSTM's state (h, c), each float32[B, H], and
its layer's parameters hold `kernel` [F, 4H], `recurrent_kernel` [H, 4H] and `bias` [4H] in
Keras' layout (gates i, f, c, o), so weight-drop, recurrent dropout and the export treat them
alike.

- `lstm`: the Keras LSTM.
- `lnlstm`: layer normalisation inside the cell (Ba, Kiros & Hinton 2016), as in Ha et al.'s
  HyperNetworks LN-LSTM: each gate's H pre-activations of the input and of the recurrent
  projection normalised separately (one gain per unit, no shift: `bias` shifts), and the cell
  state normalised (gain and shift) before its tanh.
- `mogrifier`: the Mogrifier LSTM (Melis, Kočiský & Blunsom 2019): before each LSTM step the
  input and the previous h gate each other for `rounds` rounds (odd rounds x *= 2 sigmoid(h Q),
  even rounds h *= 2 sigmoid(x R)). For the first layer x is one-hot, so its rounds are gathers
  of Q's and R's rows and a scalar per row; a stacked layer's Q and R may be low-rank
  products (`rank`), as in the paper.

`lstm` and `lnlstm` are LSTM-shaped (`lstm_shaped`: the recurrent matmul, then an `update`):
they train through the fast scan of `charjax.scans`; the mogrifier through autodiff of the
plain scan.
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
    `--mogrify-rank` set."""

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
    (recurrent dropout). An LSTM-shaped cell also has `update(params, inputs_t, r, c)` -> (h,
    c), its step after the recurrent matmul r = (h * hmask) @ recurrent_kernel float32[B, 4H]:
    its step is built from it (`lstm_shaped`), and the fast training scan (`charjax.scans`)
    runs it forward and through its VJP backward. `title`: how a person names it; `format`:
    its export format; `remat`: the fast scan's backward recomputes `update` from its inputs
    instead of keeping its residuals (cheaper where they are many: the LN-LSTM's
    normalisations); `summed`: `update` reads its inputs and r only as their sum (the LSTM's
    z = inputs + r), so their gradients are one array and the backward keeps it once."""

    shapes: Callable
    inputs: Callable
    step: Callable
    update: Callable | None = None
    title: str = ""
    format: str = "charjax-export/2"
    remat: bool = False
    summed: bool = False


def lstm_shaped(shapes, inputs, update, title: str, format: str = "charjax-export/2",
                remat: bool = False, summed: bool = False) -> Cell:  # fmt: skip
    """A cell whose step is the recurrent matmul, then `update` (see `Cell`)."""

    def step(params, carry, inputs_t, dtype=None, hmask=None):
        h, c = carry
        return update(params, inputs_t, recurrent(params["recurrent_kernel"], h, dtype, hmask), c)

    return Cell(shapes, inputs, step, update, title, format, remat, summed)


def recurrent(kernel: jax.Array, h: jax.Array, dtype=None, hmask=None) -> jax.Array:
    """The recurrent matmul: (h * hmask) @ kernel -> float32[B, 4H] (`hmask`: recurrent
    dropout, one mask per sequence, the same at every step)."""
    return lstm.matmul(h if hmask is None else h * hmask, kernel, dtype)


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


# lstm: Keras' LSTM


def _lstm_inputs(params, x, dtype):
    return _projected(params, x, dtype) + params["bias"]


LSTM = lstm_shaped(
    lambda f, h, ids, options: _lstm_shapes(f, h),
    _lstm_inputs,
    lambda params, xz, r, c: _update(xz + r, c),
    "LSTM",
    "charjax-export/1",  # format 1: LSTM layers (kernel, recurrent_kernel, bias)
    summed=True,
)


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


def _ln_update(params, xz, r, c):
    z = xz + gate_norm(r, params["recurrent_gain"])
    return _update(z, c, lambda c: normalise(c) * params["cell_gain"] + params["cell_bias"])


LNLSTM = lstm_shaped(_ln_shapes, _ln_inputs, _ln_update, "LN-LSTM", remat=True)


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
    gated = h if hmask is None else h * hmask
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


MOGRIFIER = Cell(_mogrifier_shapes, _mogrifier_inputs, _mogrifier_step, title="Mogrifier LSTM")

CELLS = {"lstm": LSTM, "lnlstm": LNLSTM, "mogrifier": MOGRIFIER}


PLAIN = Options()  # the options of a cell without any


def zero_state(like: jax.Array, hidden: int) -> tuple:
    """Every cell's zero state: (h, c) float32[B, H] of zeros, B the first axis of `like` (a
    batch's data: derived from it, not built from shapes, so that inside `shard_map` it has
    the same per-device type as the states the scans compute)."""
    column = jnp.zeros_like(like.reshape(like.shape[0], -1)[:, :1], jnp.float32)
    zeros = column + jnp.zeros((hidden,), jnp.float32)
    return zeros, zeros


def dims(layer: dict) -> tuple[int, int]:
    """(input features, hidden units) of one layer's parameters (every cell keeps the LSTM's
    kernels)."""
    features, gates = layer["kernel"].shape
    return features, gates // 4
