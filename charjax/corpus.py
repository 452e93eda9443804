"""The corpus: text files resolved (a file, a folder's files matching `--glob`, several paths,
or the downloaded and SHA-256-checked Nietzsche), read and encoded block by block into char ids
(`load`) with their `Vocab`, and the split into training text and a held-out tail (`split`).

The corpus is a flat array of char ids in the narrowest dtype of its vocabulary (one byte a char
up to 256 distinct chars); the text is never held whole as a string, and windows are sliced from
the ids on demand (`batching`), never the one-hot `(windows, maxlen, vocab)` tensor of the
original. Several files are joined with `SEPARATOR` between them.
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


SEPARATOR = "\n\n"  # between the files of a corpus of several: a blank line
BLOCK = 1 << 22  # bytes read, decoded and encoded at a time
MAX_CHARS = 2**31 - 1  # window starts are int32


def resolve_corpus(text: str, *, url: str = NIETZSCHE_URL, sha256: str = NIETZSCHE_SHA256) -> Path:
    """Path of one corpus file: a user path as given, or Nietzsche from data dir, cache or
    download."""
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


def resolve_files(text: str, recursive: bool = False, globs=("*.txt",)) -> list[Path]:
    """The files of `--text`: 'nietzsche', a file, a folder (its files matching any of the
    `globs` patterns, sorted by path; with `recursive` those of its subfolders too), or several
    of these joined with `os.pathsep`, in the order given."""
    files = []
    parts = [text] if Path(text).expanduser().exists() else text.split(os.pathsep)
    for part in parts:
        path = Path(part).expanduser()
        if part != NIETZSCHE and path.is_dir():
            found = set()
            for pattern in globs:
                found.update(path.rglob(pattern) if recursive else path.glob(pattern))
            found = sorted(f for f in found if f.is_file())
            if not found:
                patterns = " or ".join(globs)
                deeper = "" if recursive else " (add --recursive to look in its subfolders)"
                raise CharjaxError(
                    f"folder {path} holds no {patterns} files{deeper}; pass --text with a "
                    "folder of UTF-8 text files, and --glob with their pattern (e.g. '*.py')"
                )
            files += found
        else:
            files.append(resolve_corpus(part))
    return files


def _named(path: Path, text: str) -> str:
    """`path` as a person finds it: relative to the --text folder it was found in
    ('email/mime/__init__.py'), else as it was given."""
    parts = [text] if Path(text).expanduser().exists() else text.split(os.pathsep)
    for part in parts:
        folder = Path(part).expanduser()
        if folder.is_dir() and path.is_relative_to(folder):
            return path.relative_to(folder).as_posix()
    return str(path)


def non_empty(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(the files with something in them, the empty ones: a package's `__init__.py` among many
    source files); every file empty is the first one's one-line error."""
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        _check_start(files[0], b"")
    return [f for f in files if f not in empty], empty


def absolute(text: str) -> str:
    """`--text` with every path made absolute (stored so --resume works from any directory)."""
    parts = [text] if Path(text).expanduser().exists() else text.split(os.pathsep)
    return os.pathsep.join(
        p if p == NIETZSCHE else str(Path(p).expanduser().absolute()) for p in parts
    )


def read_text(path: Path, *, max_chars: int = 0, lower: bool = True) -> str:
    """The text of a UTF-8 file, cut to `max_chars` (0 = all) and lower-cased like the original
    (the whole text as one string: for scoring a file, not for a training corpus)."""
    text = "".join(block for _, block in _blocks(path))
    if max_chars > 0:
        text = text[:max_chars]
    return text.lower() if lower else text


def _blocks(path: Path, size: int | None = None):
    """(raw bytes, decoded text) blocks of a UTF-8 file, cut between characters; one clear
    error for an empty, binary or non-UTF-8 file."""
    with open(path, "rb") as f:
        pending, offset, first = b"", 0, True
        while True:
            raw = f.read(size or BLOCK)
            if first:
                _check_start(path, raw)
                first = False
            data = pending + raw
            cut = _char_boundary(data) if raw else len(data)
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError as e:
                raise CharjaxError(
                    f"{path} is not valid UTF-8 (bad byte at offset {offset + e.start}); "
                    "convert it to UTF-8"
                ) from None
            yield raw, text
            if not raw:
                return
            pending, offset = data[cut:], offset + cut


def _check_start(path: Path, raw: bytes) -> None:
    """One line for an empty file or a binary one (a NUL byte in its first 64 KiB)."""
    if not raw:
        raise CharjaxError(f"{path} is empty; pass a text file with --text")
    nul = raw.find(b"\x00", 0, 65536)
    if nul >= 0:
        raise CharjaxError(
            f"{path} looks like a binary file (NUL byte at offset {nul}); pass a UTF-8 text file"
        )


def _char_boundary(data: bytes) -> int:
    """The last index <= len(data) that does not split a UTF-8 sequence (a lead byte or ASCII
    starts there), looking back at most 3 bytes."""
    for back in range(1, min(4, len(data)) + 1):
        if data[-back] & 0xC0 != 0x80:  # not a continuation byte: a sequence starts here
            lead = data[-back]
            need = 1 if lead < 0x80 else 2 if lead >> 5 == 6 else 3 if lead >> 4 == 14 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)


@dataclass(frozen=True)
class Corpus:
    vocab: Vocab
    ids: np.ndarray  # [n] char ids in `vocab.dtype` (uint8 for up to 256 distinct chars)
    sha256: str  # of the file as read from disk; of the files' digests for several
    prime: str  # the first maxlen chars (the default prime for sampling)
    left_out: str = ""  # distinct chars of the file that --max-chars cut away (not in the vocab)
    empty: tuple[str, ...] = ()  # files of --text left out because they are empty


def _texts(files: list[Path], max_chars: int, lower: bool, digests: list | None = None):
    """The corpus text block by block: files joined with `SEPARATOR`, cut to `max_chars`
    (counted before lower-casing, as `read_text`), lower-cased -> (used, past) pairs where
    `past` is text beyond the cut. With `digests`, each file's SHA-256 is appended to it."""
    budget = max_chars if max_chars > 0 else -1
    for i, path in enumerate(files):
        h = hashlib.sha256()
        tail = ""  # lower-casing is cut after a line break, where no context rule reaches
        for raw, text in _blocks(path):
            h.update(raw)
            text = tail + text + (SEPARATOR if not raw and i + 1 < len(files) else "")
            at = max(text.rfind("\n") + 1, text.rfind(" ") + 1) if raw else len(text)
            if at == 0:  # no break to cut at: wait for one, but not forever
                if len(text) < 4 * BLOCK:
                    tail = text
                    continue
                at = len(text)
            text, tail = text[:at], text[at:]
            if budget < 0:
                yield (text.lower() if lower else text), ""
                continue
            used, past = text[:budget], text[budget:]
            budget -= len(used)
            yield (used.lower() if lower else used), (past.lower() if lower else past)
        if digests is not None:
            digests.append(h.hexdigest())


def _fingerprint(files: list[Path], digests: list[str]) -> str:
    """One file: its SHA-256 (as earlier checkpoints recorded); several: the SHA-256 of their
    names and digests in order, so a changed, added, removed or reordered file shows."""
    if len(files) == 1:
        return digests[0]
    listing = "".join(f"{d}  {f.name}\n" for f, d in zip(files, digests, strict=True))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def load(cfg: Config) -> Corpus:
    """Resolve, read and encode the corpus in two passes over its files (the vocabulary, then
    the ids), never holding the whole text; error if it cannot give a single window."""
    files, empty = non_empty(resolve_files(cfg.text, cfg.recursive, cfg.glob))
    chars, beyond, n, prime, digests = set(), set(), 0, "", []
    for used, past in _texts(files, cfg.max_chars, cfg.lower, digests):
        chars.update(used)
        beyond.update(past)
        if len(prime) < cfg.maxlen:
            prime += used[: cfg.maxlen - len(prime)]
        n += len(used)
    where = files[0] if len(files) == 1 else f"--text {cfg.text}"
    if n < cfg.maxlen + 1:
        raise CharjaxError(
            f"{where} gives {n} chars, fewer than --maxlen + 1 = {cfg.maxlen + 1}; use a "
            "longer text or a smaller --maxlen"
        )
    if n > MAX_CHARS:
        raise CharjaxError(
            f"{where} gives {n:,} chars, more than the {MAX_CHARS:,} one run can index; "
            "pass --max-chars or split the corpus"
        )
    vocab = Vocab("".join(sorted(chars)))
    ids, at, encode = np.empty(n, vocab.dtype), 0, vocab.encoder()
    for used, _ in _texts(files, cfg.max_chars, cfg.lower):
        if at + len(used) > n:
            raise _changed(where)
        ids[at : at + len(used)] = encode(used)
        at += len(used)
        if at == n:  # the rest is beyond --max-chars
            break
    if at != n:
        raise _changed(where)
    left_out = "".join(sorted(beyond - chars))
    fingerprint = _fingerprint(files, digests)
    return Corpus(
        vocab, ids, fingerprint, prime, left_out, tuple(_named(f, cfg.text) for f in empty)
    )


def _changed(where) -> CharjaxError:
    return CharjaxError(f"{where} changed while it was being read; run again once it is written")


def load_saved(cfg: Config, sha256: str, vocab: str, directory) -> Corpus:
    """The corpus a checkpoint was trained on, refusing a changed file or vocabulary."""
    corpus = load(cfg)
    if corpus.sha256 != sha256 or corpus.vocab.chars != vocab:
        raise CharjaxError(
            f"the corpus {cfg.text} is not the one the checkpoint in {directory} was "
            "trained on (different files or vocabulary); pass the original with --text"
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
