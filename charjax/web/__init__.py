"""The browser side of `charjax-export`: `charlstm.mjs` (the LSTM in JavaScript, importable by
Node) and `page.html` (the page template)."""

from pathlib import Path


def charlstm_path() -> Path:
    return Path(__file__).parent / "charlstm.mjs"
