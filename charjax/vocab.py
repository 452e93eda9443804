"""The character vocabulary: sorted distinct chars, a char's id its index (the original's
`char_indices`); encoding text to ids and back.

Ids are stored in the narrowest unsigned dtype that holds the vocabulary (`id_dtype`: uint8 up to
256 chars, uint16 up to 65,536), so a corpus takes one or two bytes a char; the model widens
them to int32 inside the jitted step.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from charjax.errors import CharjaxError


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

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(self.size)

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
        """ids[len(text)] in `dtype`; raises on chars outside the vocabulary."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = self._codepoints()
        ids = np.searchsorted(table, cps)
        bad = (ids >= len(table)) | (table[np.minimum(ids, len(table) - 1)] != cps)
        if bad.any():
            raise CharjaxError(
                f"characters not in the vocabulary: {self.unknown(text)!r}; remove them"
            )
        return ids.astype(self.dtype)

    def encoder(self):
        """A fast encoder for text known to hold only vocabulary chars (the corpus it was
        built from): str -> ids in `dtype`, through a table indexed by code point."""
        cps = self._codepoints()
        table = np.zeros(int(cps.max()) + 1 if len(cps) else 1, self.dtype)
        table[cps] = np.arange(len(cps), dtype=self.dtype)
        return lambda text: table[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).tolist())


def id_dtype(size: int) -> np.dtype:
    """The narrowest unsigned dtype for ids of a `size`-char vocabulary."""
    for dtype in (np.uint8, np.uint16):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)
