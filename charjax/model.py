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
        return lstm.final(params, ids, carry, valid)


class CharLSTM(nn.Module):
    """ids int32[B, T] -> ((h, c) float32[B, H], logits float32[B, V] after the last step)."""

    vocab_size: int
    hidden: int = 128

    @nn.compact
    def __call__(self, ids, carry=None, valid=None):
        carry = LSTM(self.vocab_size, self.hidden, name="lstm")(ids, carry, valid)
        dense = nn.Dense(
            self.vocab_size, kernel_init=nn.initializers.glorot_uniform(), name="dense"
        )
        return carry, dense(carry[0])


def shape_of(params: dict) -> tuple[int, int]:
    """(vocab_size, hidden) read off a parameter tree."""
    vocab_size, gates = params["lstm"]["kernel"].shape
    return vocab_size, gates // 4


def init_params(key: jax.Array, vocab_size: int, hidden: int) -> dict:
    """Fresh parameters with Keras' initialisers: {'lstm': {...}, 'dense': {...}}."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return CharLSTM(vocab_size, hidden).init(key, ids)["params"]


def forward(params: dict, ids: jax.Array, carry=None, valid=None):
    """Pure forward pass: ids int32[B, T] -> ((h, c), logits float32[B, V])."""
    return CharLSTM(*shape_of(params)).apply({"params": params}, ids, carry, valid)


def num_params(params: dict) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
