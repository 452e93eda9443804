"""What a run learns to predict, and so how it cuts the text, reads it back and is scored.

The only place that knows "the char after each window" (the original) from "every next char"
(`--objective sequence`), and shuffled windows from carried streams (`--carry-state`):
`objective.of(cfg)` answers for the training starts, the plan, the gather, the loss per window,
the chars per window and the default reading for sampling and scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import optax
from jax.sharding import Mesh

from charjax import batching


@dataclass(frozen=True)
class Objective:
    maxlen: int
    step: int
    batch_size: int
    every_position: bool  # predict every next char of a window, not just the one after it
    carried: bool  # contiguous streams, the LSTM state carried from one window to the next

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

    def starts(self, split: int):
        """int32[windows] training starts in ids [0, split): the original's windows, or
        contiguous streams step by step."""
        if self.carried:
            return batching.stream_starts(split, self.batch_size, self.maxlen)
        return batching.window_starts(split, self.maxlen, self.step)

    def plan(self, key, epoch: int, starts, steps_per_call: int, mesh: Mesh):
        """The epoch's plan (`batching`), batches padded to split evenly over the mesh and
        placed on it."""
        width = batching.device_width(self.batch_size, mesh)
        common = dict(batch_size=self.batch_size, steps_per_call=steps_per_call, width=width)
        if self.carried:
            plan = batching.make_stream_plan(key, epoch, starts, maxlen=self.maxlen, **common)
        else:
            plan = batching.make_window_plan(key, epoch, starts, **common)
        return batching.placed(plan, mesh)

    def gather(self, ids: jax.Array, starts: jax.Array):
        """A batch's inputs int32[B, maxlen] and targets: int32[B] (last) or [B, maxlen]."""
        if self.every_position:
            return batching.gather_sequences(ids, starts, self.maxlen)
        return batching.gather_windows(ids, starts, self.maxlen)

    def window_losses(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Cross-entropy in nats of each window, float32[B], summed over its predicted chars."""
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return losses.sum(axis=-1) if self.every_position else losses


def of(cfg) -> Objective:
    """The objective of a config (`--objective`, `--carry-state`, and the window shape)."""
    return Objective(
        cfg.maxlen, cfg.step, cfg.batch_size, cfg.objective == "sequence", cfg.carry_state
    )
