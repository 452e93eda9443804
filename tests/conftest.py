"""Shared fixtures (the real corpus: data dir, cache or checked download; tiny texts) and the two
test tiers.

Tests marked `slow` (they start subprocesses, train or compile for more than ~10 s on a 2-core
host, run Node.js or strace, or kill processes) are deselected by default, so that the fast tier
runs in a few minutes:

    python -m pytest -q          # the fast tier
    python -m pytest -q --all    # everything (what CI runs)
    python -m pytest -q -m slow  # only the slow tier: an explicit -m decides on its own

A slow test named by its node ID (`tests/test_x.py::test_y`) runs without --all too. Tests that
need the corpus sit in both tiers: without it, the fast tier fails as well."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# One compilation cache for the whole test run, inherited by the pytest-xdist workers and the CLI
# subprocesses: the same tiny programs are compiled once instead of once per process. (Set before
# anything imports jax; removed when the run that made it ends.)
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="charjax-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# The suite checks float32 math (Keras parity at 1e-5, modes that agree exactly): on a GPU,
# float32 matmuls default to TF32 (10-bit mantissas), so the tests ask for full float32. No
# effect on CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# The tests import the checkout's `benchmarks` (the repository root last on the path, so that
# an installed charjax still comes first).
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from util import TINY_TEXT  # noqa: E402  (after the environment above)

from charjax.config import Config  # noqa: E402

_SLOW_LEFT_OUT = pytest.StashKey[int]()  # how many slow tests this run deselected


def pytest_addoption(parser):
    parser.addoption(
        "--all",
        action="store_true",
        help="also run the tests marked slow (deselected by default; an explicit -m overrides)",
    )


def _named(item, config) -> bool:
    """Whether the command line names `item` by its node ID: `file::test`, or a parametrized
    test's base name for all its cases."""
    test = item.nodeid.partition("::")[2]
    for arg in map(str, config.args):
        path, _, name = arg.partition("::")
        if name and (config.invocation_params.dir / path).resolve() == item.path:
            if test == name or test.startswith((name + "[", name + "::")):
                return True
    return False


def pytest_collection_modifyitems(config, items):
    """The fast tier: without --all or -m, the tests marked slow are deselected (never skipped:
    a deselected test is not run, a skipped one would read as a pass that did not happen)."""
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    slow = [i for i in items if i.get_closest_marker("slow") and not _named(i, config)]
    if slow:
        config.hook.pytest_deselected(items=slow)
        chosen = set(map(id, slow))
        items[:] = [i for i in items if id(i) not in chosen]
        config.stash[_SLOW_LEFT_OUT] = len(slow)
        if hasattr(config, "workeroutput"):  # a pytest-xdist worker: tell the controller
            config.workeroutput["slow_left_out"] = len(slow)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist: the workers collect, the controller reports."""
    left_out = getattr(node, "workeroutput", {}).get("slow_left_out", 0)
    node.config.stash[_SLOW_LEFT_OUT] = max(node.config.stash.get(_SLOW_LEFT_OUT, 0), left_out)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, config):
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests deselected: --all runs them too")


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
