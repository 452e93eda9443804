"""Share a model: its weights, vocabulary and recipe as plain JSON (`to_json`, layout in
docs/export.md), or as one self-contained web page that writes in the browser (`to_html`),
running the JavaScript LSTM of `charjax/web/charlstm.mjs` (no network, no framework)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np

from charjax import cells, model
from charjax.errors import CharjaxError
from charjax.inference import SavedModel
from charjax.web import charlstm_path

WEB = charlstm_path().parent
MAX_PAGE_BYTES = 64 << 20  # browsers choke on larger pages; use --json for such models


def _tensor(x) -> dict:
    """{shape, dtype, data}: the values as little-endian float32, base64-encoded, row-major."""
    values = np.ascontiguousarray(np.asarray(x, dtype="<f4"))
    return {
        "shape": list(values.shape),
        "dtype": "float32",
        "data": base64.b64encode(values).decode(),
    }


def to_json(saved: SavedModel) -> dict:
    """The exported model: format, vocabulary, recipe (the training file by name only, not its
    path), epoch, default prime, the cell (`charjax.cells`) and the weights of every layer
    (Keras layout: kernel [inputs, 4H], recurrent_kernel [H, 4H], bias [4H], gates i, f, c, o;
    plus the cell's own) and of the dense layer (kernel [H, V], bias [V])."""
    params, spec = saved.params, saved.spec
    layers = [params[name] for name in spec.layer_names()]
    return {
        "format": cells.CELLS[spec.cell].format,
        "cell": spec.cell,
        "vocab": saved.meta.vocab,
        "recipe": {**saved.meta.cfg.to_dict(), "text": Path(saved.meta.cfg.text).name},
        "epoch": saved.meta.epoch,
        "prime": saved.meta.prime,
        "layers": [{name: _tensor(layer[name]) for name in sorted(layer)} for layer in layers],
        "dense": {name: _tensor(params["dense"][name]) for name in ("kernel", "bias")},
    }


def to_html(saved: SavedModel, title: str) -> str:
    """One page with the model and the sampler embedded: prime, temperature, top-p, length,
    Generate / Stop, the text appearing char by char."""
    # No "<" at all inside the <script> element: "</script>" or "<!--" in a text cannot end
    # or confuse it ("\u003c" is the same char to JSON.parse).
    exported = json.dumps(to_json(saved), ensure_ascii=True).replace("<", "\\u003c")
    page = (WEB / "page.html").read_text(encoding="utf-8")
    script = (WEB / "charlstm.mjs").read_text(encoding="utf-8")
    values = {
        "TITLE": html.escape(title),
        "PRIME": html.escape(saved.meta.prime),
        "RECIPE": html.escape(_recipe_line(saved)),
        "CHARLSTM": script,
        "MODEL": exported,
    }
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], page)  # one pass
    return page


def _recipe_line(saved: SavedModel) -> str:
    cfg = saved.meta.cfg
    size = model.num_params(saved.params)
    cell = cells.CELLS[cfg.cell].title
    return (
        f"{cfg.layers} x {cell}({cfg.hidden}), {len(saved.meta.vocab)} chars, {size:,} "
        "parameters; "
        f"epoch {saved.meta.epoch}"
    )


def write(path, text: str, what: str) -> Path:
    """Write `text` to `path` (its folder must exist); a problem is one line naming the path."""
    path = Path(path).expanduser()
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise CharjaxError(
            f"cannot write the {what} to {path} ({e.strerror or e}); choose another path"
        ) from None
    return path


def write_page(saved: SavedModel, path, title: str) -> int:
    """Write the web page -> its size in bytes; a model too big for a page is refused."""
    page = to_html(saved, title)
    size = len(page.encode("utf-8"))
    if size > MAX_PAGE_BYTES:
        raise CharjaxError(
            f"this model makes a {size / 2**20:.0f} MB page, more than a browser handles well "
            f"({MAX_PAGE_BYTES >> 20} MB); export it with --json instead"
        )
    write(path, page, "page")
    return size
