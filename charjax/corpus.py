"""The corpus: text files resolved, downloaded (SHA-256 checked), read and encoded as char ids
(`load`) with their `Vocab`, and the split into training text and a held-out tail (`split`).

The corpus stays a flat int32 array of char ids; windows are sliced from it on demand
(`batching`), never the one-hot `(windows, maxlen, vocab)` tensor of the original.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charjax import objective
from charjax.config import Config
from charjax.errors import CharjaxError
from charjax.vocab import Vocab

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
    return _cut(_decode(path), max_chars, lower)


def _cut(text: str, max_chars: int, lower: bool) -> str:
    if max_chars > 0:
        text = text[:max_chars]
    return text.lower() if lower else text


def _decode(path: Path) -> str:
    """The whole text of a UTF-8 file; one clear error for an empty, binary or non-UTF-8 one."""
    raw = Path(path).read_bytes()
    if not raw:
        raise CharjaxError(f"{path} is empty; pass a text file with --text")
    if b"\x00" in raw[:65536]:
        offset = raw.index(b"\x00")
        raise CharjaxError(
            f"{path} looks like a binary file (NUL byte at offset {offset}); pass a UTF-8 text file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharjaxError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None


@dataclass(frozen=True)
class Corpus:
    text: str
    vocab: Vocab
    ids: np.ndarray  # int32[n]
    sha256: str  # of the file as read from disk
    left_out: str = ""  # distinct chars of the file that --max-chars cut away (not in the vocab)


def load(cfg: Config) -> Corpus:
    """Resolve, read and encode the corpus; error if it cannot give a single window."""
    path = resolve_corpus(cfg.text)
    whole = _decode(path)
    text = _cut(whole, cfg.max_chars, cfg.lower)
    left_out = ""
    if 0 < cfg.max_chars < len(whole):
        left_out = "".join(sorted(set(_cut(whole, 0, cfg.lower)) - set(text)))
    if len(text) < cfg.maxlen + 1:
        raise CharjaxError(
            f"{path} gives {len(text)} chars, fewer than --maxlen + 1 = {cfg.maxlen + 1}; use a "
            "longer text or a smaller --maxlen"
        )
    vocab = Vocab.from_text(text)
    return Corpus(text, vocab, vocab.encode(text), sha256_of(path), left_out)


def load_saved(cfg: Config, sha256: str, vocab: str, directory) -> Corpus:
    """The corpus a checkpoint was trained on, refusing a changed file or vocabulary."""
    corpus = load(cfg)
    if corpus.sha256 != sha256 or corpus.vocab.chars != vocab:
        raise CharjaxError(
            f"the corpus {cfg.text} is not the one the checkpoint in {directory} was "
            "trained on (different file or vocabulary); pass the original with --text"
        )
    return corpus


def split_point(n: int, val_fraction: float) -> int:
    """Chars [0, split) are for training, [split, n) the held-out tail (`val_fraction` of n)."""
    return int(n * (1.0 - val_fraction)) if val_fraction > 0 else n


def split(corpus: Corpus, cfg: Config) -> int:
    """Where the held-out tail begins (len(ids) without one); errors if a part is too short."""
    n = len(corpus.ids)
    at = split_point(n, cfg.val_fraction)
    if at <= cfg.maxlen:
        raise CharjaxError(
            f"--val-fraction {cfg.val_fraction:g} leaves {at} chars for training, not more "
            f"than --maxlen {cfg.maxlen}; use a longer text or a smaller --val-fraction"
        )
    need = objective.of(cfg).validation_chars
    if cfg.val_fraction > 0 and n - at < need:
        raise CharjaxError(
            f"--val-fraction {cfg.val_fraction:g} holds out {n - at} chars, fewer than the "
            f"{need} validation needs; raise it, or pass --val-fraction 0 to skip validation"
        )
    return at
