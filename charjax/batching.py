"""Batches: window starts, the windows sliced from the ids on device, and epoch plans.

An epoch plan is a pure function of `(key, epoch)`: the order of every window (shuffled, or
contiguous streams shifted by a random offset), `batch_size` to a batch, `steps_per_call`
batches to a chunk, so a resumed run needs no iterator state. `placed` puts it on the mesh.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from charjax import parallel


def window_starts(n: int, maxlen: int, step: int) -> np.ndarray:
    """int32[windows] start offsets `range(0, n - maxlen, step)`: the original's windows.

    Every window and its target(s) lie inside ids [0, n): with n the split point, no window
    straddles the held-out tail.
    """
    return np.arange(0, max(n - maxlen, 0), step, dtype=np.int32)


def gather_windows(ids: jax.Array, starts: jax.Array, maxlen: int) -> tuple[jax.Array, jax.Array]:
    """Inputs int32[B, maxlen] and next-char targets int32[B], sliced from the id array."""
    inputs = ids[starts[:, None] + jnp.arange(maxlen, dtype=starts.dtype)]
    return inputs, ids[starts + maxlen]


def stream_starts(n: int, streams: int, maxlen: int) -> np.ndarray:
    """int32[steps * streams] window starts that cut ids [0, n) into `streams` contiguous
    streams read `maxlen` chars a step: step j of stream b starts at b*L + j*maxlen.

    Listed step by step (the windows of one step, one per stream, are consecutive), so that
    the windows of step j+1 continue those of step j. L leaves room for an offset of up to
    maxlen-1 (`stream_plan`) with every target still inside [0, n).
    """
    length = max(n - 1 - maxlen, 0) // streams
    steps = length // maxlen
    grid = np.arange(streams)[None, :] * length + np.arange(steps)[:, None] * maxlen
    return grid.reshape(-1).astype(np.int32)


def gather_sequences(ids: jax.Array, starts: jax.Array, maxlen: int) -> tuple[jax.Array, jax.Array]:
    """Inputs int32[B, maxlen] and the next char of every position, targets int32[B, maxlen]."""
    inputs = ids[starts[:, None] + jnp.arange(maxlen + 1, dtype=starts.dtype)]
    return inputs[:, :-1], inputs[:, 1:]


def epoch_plan(
    key: jax.Array,
    epoch: int,
    starts: jax.Array,
    batch_size: int,
    steps_per_call: int,
    width: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One epoch's batches as starts int32[chunks, steps_per_call, width] and weights float32[...].

    Every window appears once, in the order `permutation(fold_in(key, epoch))`, `batch_size`
    to a batch. Weight-0 slots pad the tail and each batch up to `width` (default `batch_size`;
    wider so that batches split evenly over devices): the last partial batch trains on its real
    windows only (as Keras does), and batches that are all padding are skipped by the train step.
    """
    n = starts.shape[0]
    width = width or batch_size
    batches = -(-n // batch_size)
    chunks = -(-batches // steps_per_call)
    slots = chunks * steps_per_call * batch_size
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    padded = jnp.zeros(slots, starts.dtype).at[:n].set(starts[order])
    weights = (jnp.arange(slots) < n).astype(jnp.float32)
    shape = (chunks, steps_per_call, batch_size)
    pad = ((0, 0), (0, 0), (0, width - batch_size))
    return jnp.pad(padded.reshape(shape), pad), jnp.pad(weights.reshape(shape), pad)


def stream_plan(
    key: jax.Array,
    epoch: int,
    starts: jax.Array,
    batch_size: int,
    steps_per_call: int,
    maxlen: int,
    width: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`epoch_plan` for contiguous streams (`stream_starts`, batch_size = streams): the steps in
    order, each stream in its own batch row, all shifted by one offset in [0, maxlen) drawn
    from `fold_in(key, epoch)`, so window boundaries move from epoch to epoch."""
    width = width or batch_size
    steps = starts.shape[0] // batch_size
    chunks = -(-steps // steps_per_call)
    offset = jax.random.randint(jax.random.fold_in(key, epoch), (), 0, maxlen, starts.dtype)
    grid = jnp.zeros((chunks * steps_per_call, batch_size), starts.dtype)
    grid = grid.at[:steps].set(starts.reshape(steps, batch_size) + offset)
    weights = (jnp.arange(chunks * steps_per_call) < steps)[:, None] * jnp.ones(batch_size)
    shape = (chunks, steps_per_call, batch_size)
    pad = ((0, 0), (0, 0), (0, width - batch_size))
    return jnp.pad(grid.reshape(shape), pad), jnp.pad(weights.reshape(shape), pad)


make_window_plan = jax.jit(epoch_plan, static_argnames=("batch_size", "steps_per_call", "width"))
make_stream_plan = jax.jit(
    stream_plan, static_argnames=("batch_size", "steps_per_call", "maxlen", "width")
)


def device_width(batch_size: int, mesh: Mesh) -> int:
    """The batch padded (with weight-0 slots) to split evenly over the mesh's devices."""
    return -(-batch_size // mesh.size) * mesh.size


def placed(plan: tuple[jax.Array, jax.Array], mesh: Mesh) -> tuple[jax.Array, jax.Array]:
    """An epoch plan with each batch's slots sharded over the mesh."""
    return parallel.put(plan, parallel.batch_sharded(mesh))
