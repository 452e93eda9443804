import hashlib
import http.server
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charjax import data
from charjax.errors import CharjaxError


@pytest.mark.parametrize(
    "n,maxlen,step",
    [(600901, 60, 3), (100, 10, 3), (61, 60, 1), (60, 60, 3), (11, 10, 7), (1000, 1, 1)],
)
def test_window_count_formula(n, maxlen, step):
    starts = data.window_starts(n, maxlen, step)
    assert starts.dtype == np.int32
    assert starts.tolist() == list(range(0, n - maxlen, step))


def test_nietzsche_numbers(nietzsche_dir):
    path = data.resolve_corpus("nietzsche")
    assert path == nietzsche_dir / "nietzsche.txt"
    assert len(data.read_text(path, lower=False)) == 600_901
    text = data.read_text(path)
    vocab = data.Vocab.from_text(text)
    assert vocab.size == 59
    assert len(data.window_starts(len(text), 60, 3)) == 200_281
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (600_901,)
    assert vocab.decode(ids[:200]) == text[:200]


def test_vocab_sorted_and_unknown_chars():
    vocab = data.Vocab.from_text("banana!")
    assert vocab.chars == "!abn"
    assert vocab.encode("nab").tolist() == [3, 1, 2]
    assert vocab.unknown("cab?") == "?c"
    with pytest.raises(CharjaxError, match="'\\?c'"):
        vocab.encode("cab?")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_encode_decode_round_trip(text):
    vocab = data.Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.shape == (len(text),) and ids.max() < vocab.size
    assert vocab.decode(ids) == text


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=2, max_size=300), st.integers(1, 20), st.integers(1, 7))
def test_windows_slice_the_text(text, maxlen, step):
    vocab = data.Vocab.from_text(text)
    ids = vocab.encode(text)
    starts = data.window_starts(len(text), maxlen, step)
    if len(starts) == 0:
        assert len(text) <= maxlen
        return
    inputs, targets = data.gather_windows(jnp.asarray(ids), jnp.asarray(starts), maxlen)
    assert inputs.shape == (len(starts), maxlen) and targets.shape == (len(starts),)
    for row, target, s in zip(np.asarray(inputs), np.asarray(targets), starts, strict=False):
        assert vocab.decode(row) == text[s : s + maxlen]
        assert vocab.decode([target]) == text[s + maxlen]


def test_epoch_plan_uses_every_window_once():
    starts = jnp.arange(0, 300, 3, dtype=jnp.int32)  # 100 windows
    key = jax.random.key(0)
    plan, weights = data.epoch_plan(key, 1, starts, batch_size=8, steps_per_call=3)
    assert plan.shape == (5, 3, 8) and plan.dtype == jnp.int32 and weights.dtype == jnp.float32
    real = np.asarray(plan)[np.asarray(weights) > 0]
    assert sorted(real.tolist()) == np.asarray(starts).tolist()
    assert float(weights.sum()) == 100
    again, _ = data.epoch_plan(key, 1, starts, batch_size=8, steps_per_call=3)
    other, _ = data.epoch_plan(key, 2, starts, batch_size=8, steps_per_call=3)
    assert (np.asarray(again) == np.asarray(plan)).all()
    assert (np.asarray(other) != np.asarray(plan)).any()


def test_read_text_errors_and_options(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(CharjaxError, match="offset 3"):
        data.read_text(bad)
    good = tmp_path / "good.txt"
    good.write_text("Hello World", encoding="utf-8")
    assert data.read_text(good) == "hello world"
    assert data.read_text(good, lower=False, max_chars=5) == "Hello"
    with pytest.raises(CharjaxError, match="does not exist"):
        data.resolve_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(CharjaxError, match="not a file"):
        data.resolve_corpus(str(tmp_path))


class _Server:
    """A one-file HTTP server on 127.0.0.1 that counts requests."""

    def __init__(self, body: bytes):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/nietzsche.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("CHARJAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_download_verifies_and_caches(empty_cache):
    body = b"some corpus text\n" * 100
    digest = hashlib.sha256(body).hexdigest()
    server = _Server(body)
    try:
        path = data.resolve_corpus("nietzsche", url=server.url, sha256=digest)
        assert path == empty_cache / "nietzsche.txt" and path.read_bytes() == body
        again = data.resolve_corpus("nietzsche", url=server.url, sha256=digest)
        assert again == path and server.hits == 1  # reused, not downloaded twice
    finally:
        server.close()


def test_download_checksum_mismatch_leaves_nothing(empty_cache):
    server = _Server(b"tampered")
    try:
        with pytest.raises(CharjaxError, match="SHA-256") as err:
            data.resolve_corpus("nietzsche", url=server.url, sha256="0" * 64)
    finally:
        server.close()
    assert "\n" not in str(err.value)
    assert not list(empty_cache.glob("*"))


def test_offline_and_uncached_says_how_to_provide_the_file(empty_cache):
    server = _Server(b"")
    url = server.url
    server.close()  # nothing listens there any more
    with pytest.raises(CharjaxError, match="CHARJAX_DATA_DIR") as err:
        data.resolve_corpus("nietzsche", url=url)
    assert "\n" not in str(err.value) and "--text" in str(err.value)


def test_data_dir_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    (tmp_path / "nietzsche.txt").write_text("not nietzsche")
    monkeypatch.setenv("CHARJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(CharjaxError, match="SHA-256"):
        data.resolve_corpus("nietzsche")
