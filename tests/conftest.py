"""Shared fixtures: the real corpus (data dir, cache or checked download) and tiny texts."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

# One compilation cache for the whole session, inherited by the CLI subprocesses: the same tiny
# programs are compiled once instead of once per process. (Set before anything imports jax.)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="charjax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# The suite checks float32 math (Keras parity at 1e-5, modes that agree exactly): on a GPU,
# float32 matmuls default to TF32 (10-bit mantissas), so the tests ask for full float32. No
# effect on CPU. (The fused Pallas kernels keep TF32; their test allows for it.)
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# The benchmarks are not installed: their tests import them from the repository root (last on
# the path, so that an installed charjax still comes first).
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from util import TINY_TEXT

from charjax.config import Config


@pytest.fixture
def nietzsche_dir(monkeypatch) -> Path:
    """The folder of the Nietzsche corpus, found the way the library finds it: $CHARJAX_DATA_DIR,
    then the cache, then the SHA-256-checked download. A test that cannot get it fails (it is
    never skipped) with one line saying how to provide it."""
    from charjax import corpus
    from charjax.errors import CharjaxError

    try:
        path = corpus.resolve_corpus(corpus.NIETZSCHE)
    except CharjaxError as e:
        pytest.fail(f"this test needs the Nietzsche corpus: {e}", pytrace=False)
    monkeypatch.setenv("CHARJAX_DATA_DIR", str(path.parent))
    return path.parent


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_cfg(tiny_text) -> Config:
    """A model and data small enough to train an epoch in well under a second."""
    return Config(
        text=str(tiny_text),
        maxlen=10,
        step=3,
        hidden=16,
        batch_size=32,
        epochs=2,
        steps_per_call=4,
        sample_length=20,
        temperatures=(0.5, 1.0),
        keep=5,
    )
