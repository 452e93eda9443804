"""Batches: how many windows a text gives, the epoch's order of them, and the windows sliced
from the ids on the host, a chunk at a time.

An epoch plan (`EpochPlan`) is a pure function of `(key, epoch)` and computes any chunk's
window starts on demand, so it takes no memory however long the epoch, and a resumed run needs
no iterator state. Shuffled windows are ordered by a keyed bijection of [0, windows) (a Feistel
network with cycle walking, `shuffle`), not a stored permutation; contiguous streams
(`--carry-state`) are read in order, shifted by a random offset each epoch (and with
`--vary-length`, each window boundary moved by its own random shift).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

ROUNDS = 6  # Feistel rounds of the window shuffle
ORDER = "feistel-1"  # names the window order; a checkpoint trained in another refuses to resume


def window_count(n: int, maxlen: int, step: int) -> int:
    """Windows `range(0, n - maxlen, step)` of the original in ids [0, n): every window and
    its target(s) lie inside [0, n), so with n the split point none straddles the tail."""
    return len(range(0, max(n - maxlen, 0), step))


def window_starts(n: int, maxlen: int, step: int) -> np.ndarray:
    """int32[windows] start offsets of those windows (`window_count`)."""
    return np.arange(0, max(n - maxlen, 0), step, dtype=np.int32)


def stream_layout(n: int, streams: int, maxlen: int, shift: int = 0) -> tuple[int, int]:
    """Ids [0, n) cut into `streams` contiguous streams read `maxlen` chars a step -> (stream
    length L, steps). Step j of stream b starts at b*L + j*maxlen; L leaves room for an offset
    of up to maxlen-1 and boundary shifts of up to `shift` (`stream_plan`, which reads windows
    maxlen + 2*shift long) with every target still inside [0, n)."""
    length = max(n - 1 - maxlen - 3 * shift, 0) // streams
    return length, length // maxlen


def stream_starts(n: int, streams: int, maxlen: int) -> np.ndarray:
    """int32[steps * streams] the streams' window starts, step by step (the windows of one
    step, one per stream, are consecutive; those of step j+1 continue those of step j)."""
    length, steps = stream_layout(n, streams, maxlen)
    grid = np.arange(streams)[None, :] * length + np.arange(steps)[:, None] * maxlen
    return grid.reshape(-1).astype(np.int32)


def shuffle_keys(key: jax.Array, epoch: int) -> np.ndarray:
    """uint32[ROUNDS] round keys of epoch `epoch`'s shuffle, from `fold_in(key, epoch)`."""
    bits = jax.random.bits(jax.random.fold_in(key, epoch), (ROUNDS,), jnp.uint32)
    return np.asarray(bits)


def _mix(x: np.ndarray, k: np.uint32) -> np.ndarray:
    """A keyed 32-bit hash (murmur3's finaliser on x ^ k)."""
    x = x ^ k
    x = (x ^ (x >> np.uint32(16))) * np.uint32(0x85EBCA6B)
    x = (x ^ (x >> np.uint32(13))) * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _feistel(x: np.ndarray, keys: np.ndarray, half: int) -> np.ndarray:
    """A bijection of [0, 4**half): a balanced Feistel network on two `half`-bit halves."""
    mask = np.uint32((1 << half) - 1)
    left, right = x >> np.uint32(half), x & mask
    for k in keys:
        left, right = right, left ^ (_mix(right, k) & mask)
    return (left << np.uint32(half)) | right


def shuffle(positions: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """int64 window indices at `positions` (each in [0, n)) of a keyed permutation of [0, n).

    The Feistel network permutes the smallest [0, 4**half) holding n; a value outside [0, n)
    is mapped again until it falls inside (cycle walking), which keeps it a bijection of
    [0, n). Each position takes O(ROUNDS) integer operations and no memory beyond its own.
    """
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    with np.errstate(over="ignore"):
        x = _feistel(np.asarray(positions, np.uint32), keys, half)
        outside = x >= n
        while outside.any():
            x[outside] = _feistel(x[outside], keys, half)
            outside = x >= n
    return x.astype(np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches, `batch_size` windows to a batch and `steps_per_call` batches to a
    chunk, each batch padded with weight-0 slots to `width` (so it splits evenly over the
    devices). Slot p < windows of the epoch holds the window `start_of(p)`; the slots after
    the last window pad the last chunk: the last partial batch trains on its real windows only
    (as Keras does) and batches that are all padding are skipped by the train step."""

    windows: int
    batch_size: int
    steps_per_call: int
    width: int
    start_of: Callable[[np.ndarray], np.ndarray]  # slots int64[...] -> window starts
    length_of: Callable[[np.ndarray], np.ndarray] | None = None  # batches -> their lengths

    @property
    def batches(self) -> int:
        return -(-self.windows // self.batch_size)

    @property
    def chunks(self) -> int:
        return -(-self.batches // self.steps_per_call)

    def counts(self, chunk: int) -> np.ndarray:
        """Real windows in each batch of chunk `chunk`, int64[steps_per_call]."""
        first = (chunk * self.steps_per_call + np.arange(self.steps_per_call)) * self.batch_size
        return np.clip(self.windows - first, 0, self.batch_size)

    def chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk `chunk`'s window starts int64[steps_per_call, width] and weights float32[...]."""
        rows = chunk * self.steps_per_call + np.arange(self.steps_per_call)
        slots = rows[:, None] * self.batch_size + np.arange(self.batch_size)[None, :]
        real = slots < self.windows
        starts = np.zeros((self.steps_per_call, self.width), np.int64)
        starts[:, : self.batch_size] = np.where(real, self.start_of(np.where(real, slots, 0)), 0)
        weights = np.zeros((self.steps_per_call, self.width), np.float32)
        weights[:, : self.batch_size] = real
        return starts, weights

    def lengths(self, chunk: int) -> np.ndarray | None:
        """Chunk `chunk`'s window length of each batch int32[steps_per_call] where they vary
        (`--vary-length`), else None (every window is the objective's maxlen)."""
        if self.length_of is None:
            return None
        rows = chunk * self.steps_per_call + np.arange(self.steps_per_call)
        return self.length_of(rows).astype(np.int32)


def window_plan(key, epoch: int, windows: int, step: int, **shape) -> EpochPlan:
    """Every window once, in the order `shuffle(shuffle_keys(key, epoch))`; window i starts
    at i * step. `shape`: batch_size, steps_per_call, width."""
    keys = shuffle_keys(key, epoch)
    return EpochPlan(windows, start_of=lambda p: shuffle(p, windows, keys) * step, **shape)


def stream_plan(
    key, epoch: int, n: int, maxlen: int, *, batch_size: int, shift: int = 0, **shape
) -> EpochPlan:
    """The contiguous streams of ids [0, n) (`stream_layout`, batch_size = streams) step by
    step, each stream in its own batch row, all shifted by one offset in [0, maxlen) drawn
    from `fold_in(key, epoch)`, so window boundaries move from epoch to epoch.

    With `shift` > 0 (`--vary-length`), the boundary before step j >= 1 also moves by its own
    shift in [-shift, shift] (`boundary_shifts`), the same for every stream: step j's windows
    run from boundary j to boundary j+1, so they are maxlen +- 2*shift long, abut, and cover
    the streams as the fixed ones do, in the same number of steps (`length_of`)."""
    epoch_key = jax.random.fold_in(key, epoch)
    length, steps = stream_layout(n, batch_size, maxlen, shift)
    offset = int(jax.random.randint(epoch_key, (), 0, maxlen, jnp.int32))
    moved = boundary_shifts(jax.random.fold_in(epoch_key, 1), shift) if shift else np.zeros_like

    def boundary(step):
        return step * maxlen + offset + moved(step)

    def start_of(slots):
        step, stream = np.divmod(slots, batch_size)
        return stream * length + boundary(step)

    def length_of(steps):
        return boundary(steps + 1) - boundary(steps)

    return EpochPlan(steps * batch_size, batch_size, start_of=start_of,
                     length_of=length_of if shift else None, **shape)  # fmt: skip


def boundary_shifts(key: jax.Array, shift: int) -> Callable[[np.ndarray], np.ndarray]:
    """steps int64[...] -> each boundary's shift in [-shift, shift], 0 for the first (the
    epoch's offset places it): a keyed hash of the step index, so any step's is computed on
    demand, in no memory however long the epoch."""
    k = np.asarray(jax.random.bits(key, (), jnp.uint32))

    def moved(steps):
        with np.errstate(over="ignore"):
            drawn = _mix(np.asarray(steps, np.uint32), k) % np.uint32(2 * shift + 1)
        return np.where(steps == 0, 0, drawn.astype(np.int64) - shift)

    return moved


def slices(ids: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """ids[start : start + length] for every start: [..., length] in the ids' own dtype,
    sliced on the host (a chunk's windows take kilobytes)."""
    return ids[np.asarray(starts)[..., None] + np.arange(length)]
