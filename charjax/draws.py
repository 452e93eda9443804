"""`Draws`: what one training step draws, in one object the step passes down to the model and
the scans: the regularisers' rates and keys, which rows a device holds, and the window length
(--vary-length). With no key a regulariser is off, so evaluation and sampling pass `NONE`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Draws:
    """A training step's draws. A pytree: the rates are static (part of the compiled program),
    keys and indices are leaves. The step builds it (`step.step_draws`); a model layer takes
    its own (`layer`), whose keys are folded with the layer's index."""

    dropout: float = struct.field(pytree_node=False, default=0.0)  # on each layer's outputs
    locked: bool = struct.field(pytree_node=False, default=False)  # one dropout mask per sequence
    weight_drop: float = struct.field(pytree_node=False, default=0.0)  # on the recurrent kernel
    recurrent_dropout: float = struct.field(pytree_node=False, default=0.0)  # on h fed back
    dropout_key: jax.Array | None = None  # each device its own (its own rows)
    weight_key: jax.Array | None = None  # the same on every device: one mask per batch
    recurrent_key: jax.Array | None = None  # one mask per row, by its index in the whole batch
    first_row: jax.Array | int = 0  # this device's first row in the whole batch
    length: jax.Array | None = None  # int32 scalar in [1, T]: the windows are that long

    def layer(self, n: int) -> Draws:
        """The draws of layer n (0-based): each key folded with n."""
        fold = lambda k: None if k is None else jax.random.fold_in(k, n)  # noqa: E731
        return self.replace(
            dropout_key=fold(self.dropout_key),
            weight_key=fold(self.weight_key),
            recurrent_key=fold(self.recurrent_key),
        )

    def outputs(self, x: jax.Array) -> jax.Array:
        """A layer's outputs x (time-major [T, B, H], or the last step's [B, H]) dropped out."""
        return apply_dropout(x, self.dropout, self.dropout_key, self.locked)

    def recurrent_kernel(self, kernel: jax.Array) -> jax.Array:
        """Weight-drop: the recurrent kernel [H, 4H] masked, one mask per call (per batch)."""
        return apply_dropout(kernel, self.weight_drop, self.weight_key)

    @property
    def masks_h(self) -> bool:
        """Whether the scans mask h where it enters the recurrent matmul (recurrent dropout)."""
        return self.recurrent_key is not None and self.recurrent_dropout > 0

    def h_mask(self, rows: int, size: int) -> jax.Array | None:
        """The recurrent dropout masks float32[rows, size] of this batch's rows, else None."""
        if not self.masks_h:
            return None
        return row_masks(self.recurrent_key, self.first_row, rows, size, self.recurrent_dropout)


NONE = Draws()  # evaluation, sampling: no masks, whole windows


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
