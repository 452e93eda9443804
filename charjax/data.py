"""Corpus loading (download, cache, SHA-256 check), the character vocabulary, and windows.

The corpus stays a flat int32 array of char ids; a training window is a slice of it taken on
demand (`gather_windows`), never the one-hot `(windows, maxlen, vocab)` tensor of the original.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charjax.errors import CharjaxError

NIETZSCHE = "nietzsche"
NIETZSCHE_URL = "https://s3.amazonaws.com/text-datasets/nietzsche.txt"
NIETZSCHE_SHA256 = "1f6258f517f66e336983f76bdb66d53614701e511100908b8eada9bccd1d1300"
NIETZSCHE_FILE = "nietzsche.txt"


def cache_dir() -> Path:
    """Downloads go to $CHARJAX_CACHE_DIR, else $XDG_CACHE_HOME/charjax or ~/.cache/charjax."""
    if os.environ.get("CHARJAX_CACHE_DIR"):
        return Path(os.environ["CHARJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charjax"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Fetch `url` into `dest` atomically; the file appears only if its SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            for block in iter(lambda: resp.read(1 << 16), b""):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise CharjaxError(
            f"could not download {url} ({reason}); put {dest.name} in $CHARJAX_DATA_DIR or "
            f"{dest.parent}, or train on your own file with --text PATH"
        ) from e
    if h.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise CharjaxError(
            f"downloaded {url} has SHA-256 {h.hexdigest()}, expected {sha256}; the file was "
            f"discarded: retry, or place a verified copy in {dest.parent}"
        )
    os.replace(part, dest)
    return dest


def resolve_corpus(text: str, *, url: str = NIETZSCHE_URL, sha256: str = NIETZSCHE_SHA256) -> Path:
    """Path of the corpus: a user path as given, or Nietzsche from data dir, cache or download."""
    if text != NIETZSCHE:
        path = Path(text).expanduser()
        if not path.exists():
            raise CharjaxError(f"text file {path} does not exist; pass --text with a UTF-8 file")
        if not path.is_file():
            raise CharjaxError(f"{path} is not a file; pass --text with a UTF-8 text file")
        return path
    data_dir = os.environ.get("CHARJAX_DATA_DIR")
    if data_dir and (Path(data_dir) / NIETZSCHE_FILE).is_file():
        path = Path(data_dir) / NIETZSCHE_FILE
        if sha256_of(path) != sha256:
            raise CharjaxError(
                f"{path} does not have the expected SHA-256 {sha256}; replace it with the "
                f"original from {url}"
            )
        return path
    cached = cache_dir() / NIETZSCHE_FILE
    if cached.is_file() and sha256_of(cached) == sha256:
        return cached
    return download(url, cached, sha256)


def read_text(path: Path, *, max_chars: int = 0, lower: bool = True) -> str:
    """The text of a UTF-8 file, cut to `max_chars` (0 = all) and lower-cased like the original."""
    raw = Path(path).read_bytes()
    if not raw:
        raise CharjaxError(f"{path} is empty; pass a text file with --text")
    if b"\x00" in raw[:65536]:
        offset = raw.index(b"\x00")
        raise CharjaxError(
            f"{path} looks like a binary file (NUL byte at offset {offset}); pass a UTF-8 text file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharjaxError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None
    if max_chars > 0:
        text = text[:max_chars]
    return text.lower() if lower else text


@dataclass(frozen=True)
class Vocab:
    """Sorted distinct characters; a char's id is its index (the original's `char_indices`)."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def _codepoints(self) -> np.ndarray:
        return np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def unknown(self, text: str) -> str:
        """The distinct chars of `text` that are not in the vocabulary, sorted."""
        return "".join(sorted(set(text) - set(self.chars)))

    def encode_known(self, text: str) -> tuple[np.ndarray, Counter]:
        """Ids of the chars of `text` that are in the vocabulary, and a count of those that are
        not (dropped: a model has no input or output for them)."""
        missing = set(self.unknown(text))
        if not missing:
            return self.encode(text), Counter()
        unknown = Counter(ch for ch in text if ch in missing)
        return self.encode("".join(ch for ch in text if ch not in missing)), unknown

    def encode(self, text: str) -> np.ndarray:
        """int32[len(text)] ids; raises on chars outside the vocabulary."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = self._codepoints()
        ids = np.searchsorted(table, cps).astype(np.int32)
        bad = (ids >= len(table)) | (table[np.minimum(ids, len(table) - 1)] != cps)
        if bad.any():
            raise CharjaxError(
                f"characters not in the vocabulary: {self.unknown(text)!r}; remove them"
            )
        return ids

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).tolist())


def split_point(n: int, val_fraction: float) -> int:
    """Chars [0, split) are for training, [split, n) the held-out tail (`val_fraction` of n)."""
    return int(n * (1.0 - val_fraction)) if val_fraction > 0 else n


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
