"""What a run learns to predict, and so how it cuts the text, reads it back and is scored.

The only place that knows "the char after each window" (the original) from "every next char"
(`--objective sequence`), and shuffled windows from carried streams (`--carry-state`):
`objective.of(cfg)` answers for the training windows, the plan, the batches, the loss per window,
the chars per window and the default reading for sampling and scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from charjax import batching


@dataclass(frozen=True)
class Objective:
    maxlen: int
    step: int
    batch_size: int
    every_position: bool  # predict every next char of a window, not just the one after it
    carried: bool  # contiguous streams, the LSTM state carried from one window to the next
    shift: int = 0  # --vary-length: carried windows' boundaries move by up to this many chars

    @property
    def span(self) -> int:
        """Chars of input a training window is given: maxlen, or with --vary-length the longest
        window (maxlen + 2*shift; a shorter one's surplus is masked out, `window_losses`)."""
        return self.maxlen + 2 * self.shift

    @property
    def chars_per_window(self) -> int:
        """Predicted chars per window: 1 for the original objective, maxlen for "sequence"."""
        return self.maxlen if self.every_position else 1

    @property
    def reading(self) -> str:
        """The default way to sample and score a model: how it was trained to read."""
        return "stateful" if self.every_position else "window"

    @property
    def validation_chars(self) -> int:
        """The fewest held-out chars that validation can score in that reading."""
        return self.maxlen + 1 if self.reading == "window" else 2

    @property
    def validation_stride(self) -> int:
        """Window reading scores held-out windows at the training stride (the training loss)."""
        return self.step if self.reading == "window" else 1

    def windows(self, split: int) -> int:
        """Training windows in ids [0, split): the original's windows, or the streams' (steps
        x streams)."""
        if self.carried:
            steps = batching.stream_layout(split, self.batch_size, self.maxlen, self.shift)[1]
            return steps * self.batch_size
        return batching.window_count(split, self.maxlen, self.step)

    def plan(self, key, epoch: int, split: int, steps_per_call: int, width: int):
        """The epoch's `batching.EpochPlan` over ids [0, split), batches padded to `width`."""
        shape = dict(batch_size=self.batch_size, steps_per_call=steps_per_call, width=width)
        if self.carried:
            return batching.stream_plan(key, epoch, split, self.maxlen, shift=self.shift, **shape)
        return batching.window_plan(key, epoch, self.windows(split), self.step, **shape)

    def batch(self, ids: np.ndarray, starts: np.ndarray):
        """The windows at `starts` [...], sliced on the host in the ids' dtype: inputs
        [..., span] and targets: [...] (the char after each) or [..., span] (every next)."""
        block = batching.slices(ids, starts, self.span + 1)
        return block[..., :-1], block[..., 1:] if self.every_position else block[..., -1]

    def window_losses(self, logits: jax.Array, targets: jax.Array, length=None) -> jax.Array:
        """Cross-entropy in nats of each window, float32[B], summed over its predicted chars
        (with `length`, an int32 scalar: its first `length` positions; the rest is padding)."""
        targets = targets.astype(jnp.int32)  # ids come in their narrow corpus dtype
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        if not self.every_position:
            return losses
        if length is not None:
            losses = jnp.where(jnp.arange(losses.shape[-1]) < length, losses, 0.0)
        return losses.sum(axis=-1)


def of(cfg) -> Objective:
    """The objective of a config (`--objective`, `--carry-state`, and the window shape)."""
    return Objective(
        cfg.maxlen, cfg.step, cfg.batch_size, cfg.objective == "sequence", cfg.carry_state,
        cfg.vary_length,
    )  # fmt: skip
