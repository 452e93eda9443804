"""Sharing a model: the JSON export and the web page; the JavaScript LSTM (run by Node) gives
charjax's next-char probabilities and greedy text."""

import json
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from util import TINY_TEXT, forward, init_params, quiet

from charjax import cells, cli, export, inference, runner
from charjax.config import Config
from charjax.run_dir import Meta
from charjax.web import charlstm_path

PREFIX = "the quick brown fox jumps over the lazy dog. a "

NODE_DRIVER = """
import { readFileSync } from "fs";
import { pathToFileURL } from "url";
const [modulePath, exportPath, prefix] = process.argv.slice(2);
import(pathToFileURL(modulePath).href).then((lstm) => {
  const model = lstm.loadModel(JSON.parse(readFileSync(exportPath, "utf8")));
  const state = lstm.zeroState(model);
  const probs = Array.from(lstm.softmax(lstm.read(model, state, lstm.encode(model, prefix))));
  const greedy = lstm.generate(model, prefix, { length: 200, temperature: 0 });
  const drawn = lstm.generate(model, prefix, { length: 50, temperature: 1.0, topP: 0.9 });
  // the page's address: its settings, and the text they give
  const hash = `#prime=${encodeURIComponent(prefix)}&temperature=0&length=200&seed=3&generate`;
  const given = lstm.settingsFromHash(hash);
  const fromHash = lstm.generate(model, given.prime, { ...given, random: lstm.seeded(given.seed) });
  const odd = lstm.settingsFromHash("#top-p=0.9&length=abc&temperature=");
  const seeded = [3, 3, 4].map((seed) => lstm.generate(model, prefix,
    { length: 50, temperature: 1.0, random: lstm.seeded(seed) }));
  console.log(JSON.stringify({ probs, greedy, drawn, given, fromHash, odd, seeded }));
});
"""


def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail(
            "these tests need Node.js (`node` on PATH): install it, e.g. apt install nodejs"
        )
    return found


MODELS = {  # each cell, stacked (the mogrifier's second layer with low-rank gating)
    "1-layer": dict(layers=1),
    "2-layers": dict(layers=2),
    "lnlstm": dict(layers=2, cell="lnlstm"),
    "mogrifier": dict(layers=2, cell="mogrifier", mogrify_rounds=5, mogrify_rank=4),
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(m, marks=[pytest.mark.slow] if "cell" in m else []) for m in MODELS.values()
    ],
    ids=list(MODELS),
)
def trained(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export")
    text = directory / "tiny.txt"
    text.write_text(TINY_TEXT, encoding="utf-8")
    cfg = Config(text=str(text), maxlen=10, hidden=16, batch_size=32, epochs=3,
                 steps_per_call=4, temperatures=(), learning_rate=0.02,
                 **request.param)  # fmt: skip
    runner.train_run(cfg, directory / "run", log=quiet)
    return directory / "run"


@pytest.mark.slow
def test_the_javascript_lstm_equals_charjax(trained, tmp_path, capsys):
    saved = inference.load(trained)
    path = tmp_path / "model.json"
    assert cli.export_main(["--checkpoint-dir", str(trained), "--json", str(path)]) == 0
    driver = tmp_path / "driver.mjs"
    driver.write_text(NODE_DRIVER)
    done = subprocess.run(
        [node(), str(driver), str(charlstm_path()), str(path), PREFIX],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    ids = jnp.asarray(saved.vocab.encode(PREFIX))[None]
    _, logits = forward(saved.params, ids)
    np.testing.assert_allclose(got["probs"], jax.nn.softmax(logits[0]), atol=1e-5)
    assert abs(sum(got["probs"]) - 1) < 1e-9 and max(got["probs"]) > 0.15  # trained
    capsys.readouterr()
    argv = ["--checkpoint-dir", str(trained), "--prime", PREFIX, "--temperature", "0"]
    assert cli.sample_main([*argv, "--mode", "stateful", "--length", "200"]) == 0
    assert got["greedy"] == capsys.readouterr().out[:-1]  # 200 chars, then charjax's newline
    assert len(got["drawn"]) == 50 and set(got["drawn"]) <= set(saved.vocab.chars)
    # the page's address sets its form; greedy from it is charjax-sample's greedy text
    want = {"prime": PREFIX, "temperature": 0, "length": 200, "seed": 3, "generate": True}
    assert got["given"] == want and got["fromHash"] == got["greedy"]
    assert got["odd"] == {"topP": 0.9}  # a value that is not a number is left to the form
    assert got["seeded"][0] == got["seeded"][1] != got["seeded"][2]  # a seed, the same text


def test_the_json_layout(trained, tmp_path):
    saved = inference.load(trained)
    exported = export.to_json(saved)
    plain = saved.meta.cfg.cell == "lstm"  # format 1: LSTM layers; 2: the layers of `cell`
    assert exported["format"] == f"charjax-export/{1 if plain else 2}"
    assert exported["vocab"] == saved.meta.vocab
    recipe = {**saved.meta.cfg.to_dict(), "text": "tiny.txt"}  # the file's name, not its path
    assert exported["recipe"] == recipe and exported["epoch"] == 3
    layers = saved.spec.layers
    assert len(exported["layers"]) == layers
    first = exported["layers"][0]
    assert first["kernel"]["shape"] == [len(saved.meta.vocab), 64]
    assert first["recurrent_kernel"]["shape"] == [16, 64] and first["bias"]["dtype"] == "float32"
    decoded = np.frombuffer(__import__("base64").b64decode(first["kernel"]["data"]), "<f4").reshape(
        first["kernel"]["shape"]
    )
    cell = saved.meta.cfg.cell
    assert exported["cell"] == cell and set(first) == set(saved.params[cell])
    np.testing.assert_array_equal(decoded, saved.params[cell]["kernel"])
    assert exported["dense"]["kernel"]["shape"] == [16, len(saved.meta.vocab)]


@pytest.mark.slow
def test_the_page_is_one_offline_file(trained, tmp_path, capsys):
    page = tmp_path / "page.html"
    argv = ["--checkpoint-dir", str(trained), "--html", str(page), "--title", "Tiny </script>"]
    assert cli.export_main(argv) == 0
    assert "KB" in capsys.readouterr().err
    html = page.read_text()
    assert "Tiny &lt;/script&gt;" in html and "{{" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no network
    assert html.count("</script>") == 2 and "<!--" not in html  # the JSON holds no "<"
    module = re.search(r'<script type="module">(.*?)</script>', html, re.S).group(1)
    script = tmp_path / "page.mjs"
    script.write_text(module)
    check = subprocess.run([node(), "--check", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    data = re.search(r'<script type="application/json" id="model">(.*?)</script>', html, re.S)
    assert json.loads(data.group(1))["vocab"] == inference.load(trained).meta.vocab
    assert "settingsFromHash(location.hash)" in html  # PAGE#...&generate generates as it loads
    shown = " ".join(cli.export_parser().format_help().split())  # as wrapped at any width
    assert "its address sets its form and generates once as it loads" in shown


def test_the_default_models_page_is_under_1_mb():
    params = init_params(jax.random.key(0), 59, 128)
    chars = "".join(chr(32 + i) for i in range(59))
    saved = inference.SavedModel(params, Meta(Config(), chars, "0" * 64, chars[:60], 60))
    size = len(export.to_html(saved, "Nietzsche").encode())
    assert 400_000 < size < 1_000_000  # 103,867 float32 weights in base64, plus the page


def test_export_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    def one_line(argv, needle):
        assert cli.export_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err

    ck = ["--checkpoint-dir", str(trained)]
    one_line(["--checkpoint-dir", str(tmp_path / "none"), "--html", "x.html"], "does not exist")
    one_line(ck, "pass --html PAGE and/or --json FILE")
    one_line([*ck, "--html", str(tmp_path / "no" / "dir" / "p.html")], "cannot write the page")
    one_line([*ck, "--json", str(tmp_path)], "cannot write the JSON export")
    monkeypatch.setattr(export, "MAX_PAGE_BYTES", 1000)
    one_line([*ck, "--html", str(tmp_path / "p.html")], "export it with --json instead")


def test_the_cell_names_and_formats_are_the_registrys_everywhere():
    """A cell is one registry entry (`charjax.cells`) plus its JavaScript twin: the config's
    choices, the export's formats and the page's cells and formats are the registry's."""
    names = list(cells.CELLS)
    assert Config.__dataclass_fields__["cell"].metadata["choices"] == tuple(names)
    script = charlstm_path().read_text(encoding="utf-8")
    start = script.index("const CELLS = {")
    body = script[start : script.index("\n};", start)]
    assert re.findall(r"^  (\w+)\(layer, state, x\)", body, re.M) == names
    formats = re.search(r"const FORMATS = \[(.*)\];", script).group(1)
    assert sorted({c.format for c in cells.CELLS.values()}) == re.findall(r'"([^"]+)"', formats)
