"""The corpus: resolving, downloading (checked), reading and encoding text, the vocabulary and
the held-out split."""

import hashlib
import http.server
import os
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
    assert ids.dtype == np.uint8 and ids.shape == (600_901,)
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


def _load(text, **kw):
    return corpora.load(Config(text=text, maxlen=4, **kw))


def test_corpus_is_read_in_blocks_exactly_as_a_whole(tmp_path, monkeypatch):
    # multi-byte chars cut by block edges, final sigmas whose lower case depends on context
    text = "ΟΔΥΣΣΕΥΣ ΚΑΙ ΣΟΦΙΑ. naïve café — 日本語の文\nΑΣ ΣΑ\n" * 50 + "end ΣΑΣ"
    path = tmp_path / "greek.txt"
    path.write_text(text, encoding="utf-8")
    whole = _load(str(path))
    monkeypatch.setattr(corpora, "BLOCK", 7)
    blocks = _load(str(path))
    assert blocks.vocab == whole.vocab == corpora.Vocab.from_text(text.lower())
    assert whole.vocab.decode(blocks.ids) == text.lower() == whole.vocab.decode(whole.ids)
    assert blocks.sha256 == whole.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert blocks.prime == text.lower()[:4]
    cut = _load(str(path), max_chars=100)
    assert cut.vocab.decode(cut.ids) == text[:100].lower()
    assert cut.left_out == "".join(sorted(set(text.lower()) - set(text[:100].lower())))


def test_ids_take_the_narrowest_dtype(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("abcabc" * 10)
    assert _load(str(small)).ids.dtype == np.uint8
    wide = tmp_path / "wide.txt"
    wide.write_text("".join(chr(0x4E00 + i) for i in range(300)) * 2, encoding="utf-8")
    corpus = _load(str(wide))
    assert corpus.ids.dtype == np.uint16 and corpus.vocab.size == 300
    assert corpus.ids.max() == 299


def test_bad_bytes_are_named_with_their_offset_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "BLOCK", 5)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("é".encode() * 10 + b"\xff" + b"abc")
    with pytest.raises(CharjaxError, match=r"bad\.txt is not valid UTF-8 \(bad byte at offset 20"):
        _load(str(bad))
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"abcdefgh" + "é".encode()[:1])
    with pytest.raises(CharjaxError, match="offset 8"):
        _load(str(cut))


def test_folders_and_lists_of_files(tmp_path):
    folder = tmp_path / "books"
    (folder / "more").mkdir(parents=True)
    (folder / "b.txt").write_text("Second book.")
    (folder / "a.txt").write_text("First book.")
    (folder / "notes.md").write_text("not a text")
    (folder / "more" / "c.txt").write_text("Third, deeper.")
    corpus = _load(str(folder))
    joined = "first book." + corpora.SEPARATOR + "second book."
    assert corpus.vocab.decode(corpus.ids) == joined
    deep = _load(str(folder), recursive=True)
    assert deep.vocab.decode(deep.ids) == joined + corpora.SEPARATOR + "third, deeper."
    listed = _load(os.pathsep.join([str(folder / "b.txt"), str(folder / "a.txt")]))
    assert listed.vocab.decode(listed.ids) == "second book." + corpora.SEPARATOR + "first book."
    # the fingerprint covers every file: a changed, added or reordered one shows
    assert len({corpus.sha256, deep.sha256, listed.sha256}) == 3
    (folder / "a.txt").write_text("First book!")
    assert _load(str(folder)).sha256 != corpus.sha256


def test_bad_files_in_a_folder_are_named(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    with pytest.raises(CharjaxError, match=r"holds no \*\.txt files"):
        _load(str(folder))
    (folder / "b.txt").write_bytes(b"")
    with pytest.raises(CharjaxError, match=r"b\.txt is empty"):  # every file empty
        _load(str(folder))
    (folder / "a.txt").write_text("a fine text")
    (folder / "b.txt").write_bytes(b"\x00\x01binary")
    with pytest.raises(CharjaxError, match=r"b\.txt looks like a binary file"):
        _load(str(folder))
    with pytest.raises(CharjaxError, match=r"missing\.txt does not exist"):
        _load(os.pathsep.join([str(folder / "a.txt"), str(folder / "missing.txt")]))


def test_a_line_without_breaks_is_still_read_in_blocks_and_paths_may_hold_colons(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(corpora, "BLOCK", 4)
    path = tmp_path / "run:1.txt"  # one path, though it holds os.pathsep on POSIX
    path.write_text("x" * 100)
    pieces = [used for used, _ in corpora._texts([path], 0, True)]
    assert "".join(pieces) == "x" * 100 and max(len(p) for p in pieces) <= 4 * 4 + 4
    assert len(_load(str(path)).ids) == 100


def test_a_folder_of_code_by_glob_with_its_empty_files_skipped(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "run.py").write_text("Print(1)\n")
    (src / "pkg" / "__init__.py").write_bytes(b"")
    (src / "pkg" / "core.py").write_text("x = 2\n")
    (src / "pkg" / "notes.md").write_text("# Notes\n")
    (src / "pkg" / "data.txt").write_text("not code")
    with pytest.raises(CharjaxError, match=r"holds no \*\.py files \(add --recursive"):
        _load(str(tmp_path), glob=("*.py",))
    code = _load(str(src), recursive=True, glob=("*.py",), lower=False)
    sep = corpora.SEPARATOR
    assert code.vocab.decode(code.ids) == "x = 2\n" + sep + "Print(1)\n"  # sorted by path
    assert code.empty == ("pkg/__init__.py",)  # named as found below the --text folder
    both = _load(str(src), recursive=True, glob=("*.py", "*.md"), lower=False)
    assert both.vocab.decode(both.ids) == "x = 2\n" + sep + "# Notes\n" + sep + "Print(1)\n"
    lowered = _load(str(src), recursive=True, glob=("*.py",))
    assert "P" in code.vocab.chars and "P" not in lowered.vocab.chars and lowered.prime == "x = "
    # the fingerprint covers the files picked: another pattern, or a new matching file, shows
    assert len({code.sha256, both.sha256}) == 2
    (src / "pkg" / "extra.txt").write_text("still not code")
    assert _load(str(src), recursive=True, glob=("*.py",), lower=False).sha256 == code.sha256
    (src / "pkg" / "extra.py").write_text("y = 3\n")
    assert _load(str(src), recursive=True, glob=("*.py",), lower=False).sha256 != code.sha256
    with pytest.raises(CharjaxError, match="--glob needs a non-empty"):
        Config(glob=()).check()
