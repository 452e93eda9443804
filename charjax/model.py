"""`CharLSTM`: the Flax module of the original model, LSTM(hidden) then Dense(vocab) logits.

The softmax of the original's last layer lives in the loss and the sampler, which work on logits
(numerically safer); probabilities are `softmax(logits)`. `forward` is the pure entry point.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from charjax import lstm


class LSTM(nn.Module):
    """Keras-layout LSTM layer over one-hot inputs given as ids (math in `charjax.lstm`)."""

    vocab_size: int
    hidden: int
    dtype: str | None = None  # matmul operand dtype; None = float32

    @nn.compact
    def __call__(self, ids, carry=None, valid=None):
        gates = 4 * self.hidden
        params = {
            "kernel": self.param("kernel", lstm.kernel_init, (self.vocab_size, gates)),
            "recurrent_kernel": self.param(
                "recurrent_kernel", lstm.recurrent_init, (self.hidden, gates)
            ),
            "bias": self.param("bias", lstm.bias_init, (gates,)),
        }
        return lstm.final(params, ids, carry, valid, self.dtype)


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


class CharLSTM(nn.Module):
    """ids int32[B, T] -> ((h, c) float32[B, H], logits float32[B, V] after the last step)."""

    vocab_size: int
    hidden: int = 128
    dtype: str | None = None  # "bfloat16": matmuls in bf16 (GPU/TPU); parameters stay float32

    @nn.compact
    def __call__(self, ids, carry=None, valid=None):
        carry = LSTM(self.vocab_size, self.hidden, self.dtype, name="lstm")(ids, carry, valid)
        return carry, Dense(self.vocab_size, self.dtype, name="dense")(carry[0])


def shape_of(params: dict) -> tuple[int, int]:
    """(vocab_size, hidden) read off a parameter tree."""
    vocab_size, gates = params["lstm"]["kernel"].shape
    return vocab_size, gates // 4


def init_params(key: jax.Array, vocab_size: int, hidden: int) -> dict:
    """Fresh parameters with Keras' initialisers: {'lstm': {...}, 'dense': {...}}."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return CharLSTM(vocab_size, hidden).init(key, ids)["params"]


def forward(params: dict, ids: jax.Array, carry=None, valid=None, dtype: str | None = None):
    """Pure forward pass: ids int32[B, T] -> ((h, c), logits float32[B, V])."""
    dtype = None if dtype in (None, "float32") else dtype
    return CharLSTM(*shape_of(params), dtype).apply({"params": params}, ids, carry, valid)


def num_params(params: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
