"""The corpus: resolving, downloading (checked), reading and encoding text, the vocabulary and
the held-out split."""

import hashlib
import http.server
import threading

import numpy as np
import pytest

from charjax import batching
from charjax import corpus as corpora
from charjax.config import Config
from charjax.errors import CharjaxError


def test_nietzsche_numbers(nietzsche_dir):
    path = corpora.resolve_corpus("nietzsche")
    assert path == nietzsche_dir / "nietzsche.txt"
    assert len(corpora.read_text(path, lower=False)) == 600_901
    text = corpora.read_text(path)
    vocab = corpora.Vocab.from_text(text)
    assert vocab.size == 59
    assert len(batching.window_starts(len(text), 60, 3)) == 200_281
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (600_901,)
    assert vocab.decode(ids[:200]) == text[:200]


def test_read_text_errors_and_options(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xffdef")
    with pytest.raises(CharjaxError, match="offset 3"):
        corpora.read_text(bad)
    good = tmp_path / "good.txt"
    good.write_text("Hello World", encoding="utf-8")
    assert corpora.read_text(good) == "hello world"
    assert corpora.read_text(good, lower=False, max_chars=5) == "Hello"
    with pytest.raises(CharjaxError, match="does not exist"):
        corpora.resolve_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(CharjaxError, match="not a file"):
        corpora.resolve_corpus(str(tmp_path))


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
        path = corpora.resolve_corpus("nietzsche", url=server.url, sha256=digest)
        assert path == empty_cache / "nietzsche.txt" and path.read_bytes() == body
        again = corpora.resolve_corpus("nietzsche", url=server.url, sha256=digest)
        assert again == path and server.hits == 1  # reused, not downloaded twice
    finally:
        server.close()


def test_download_checksum_mismatch_leaves_nothing(empty_cache):
    server = _Server(b"tampered")
    try:
        with pytest.raises(CharjaxError, match="SHA-256") as err:
            corpora.resolve_corpus("nietzsche", url=server.url, sha256="0" * 64)
    finally:
        server.close()
    assert "\n" not in str(err.value)
    assert not list(empty_cache.glob("*"))


def test_offline_and_uncached_says_how_to_provide_the_file(empty_cache):
    server = _Server(b"")
    url = server.url
    server.close()  # nothing listens there any more
    with pytest.raises(CharjaxError, match="CHARJAX_DATA_DIR") as err:
        corpora.resolve_corpus("nietzsche", url=url)
    assert "\n" not in str(err.value) and "--text" in str(err.value)


def test_data_dir_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    (tmp_path / "nietzsche.txt").write_text("not nietzsche")
    monkeypatch.setenv("CHARJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(CharjaxError, match="SHA-256"):
        corpora.resolve_corpus("nietzsche")


def test_default_split_of_nietzsche(nietzsche_dir):
    cfg = Config()
    corpus = corpora.load(cfg)
    split = corpora.split(corpus, cfg)
    assert (split, len(corpus.ids) - split) == (540_810, 60_091)
    assert len(batching.window_starts(split, cfg.maxlen, cfg.step)) == 180_250
    assert len(batching.window_starts(len(corpus.ids), cfg.maxlen, cfg.step)) == 200_281  # --val 0
