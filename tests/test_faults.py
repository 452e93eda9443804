"""Fault injection (slow tier): strace fails one file operation of an epoch's save or of a
resume's restore (the Nth openat, write, fsync, rename, mkdir or unlink: EIO or ENOSPC). Each
case ends in success or in one line on stderr, leaves the checkpoints saved before intact
(their digests verify), and a plain --resume afterwards ends bit-identical to a run that was
never interrupted."""

import os
import shutil
import subprocess
import sys

import pytest
from util import TINY_TEXT, quiet, same_trees

from charjax import runner
from charjax.checkpoint import Checkpoints
from charjax.config import Config
from charjax.step import state_shape

# Runs a resumed training in which strace is attached to this very process (all its threads)
# only while `Checkpoints.<phase>` runs: the Nth call counts from the start of the save or
# restore (per thread, as strace counts), not from the start of Python.
DRIVER = r"""
import ctypes, os, subprocess, sys, time
from charjax import checkpoint, cli

syscalls, error, when, phase = sys.argv[1:5]


def attached():
    try:
        with open("/proc/self/status") as status:
            return "TracerPid:\t0\n" not in status.read()
    except OSError:  # an injected error: strace is there
        return True


def traced(method):
    def run(*args, **kw):
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={syscalls}",
             "-e", f"inject={syscalls}:error={error}:when={when}", "-p", str(os.getpid())]
        )
        time.sleep(1)  # while strace attaches to every thread: no file operation to count
        try:
            return method(*args, **kw)
        finally:
            there = attached()
            tracer.terminate()
            tracer.wait()
            if not there:
                sys.exit("strace did not attach to the process (is ptrace allowed?)")

    return run


ctypes.CDLL(None).prctl(0x59616D61, ctypes.c_ulong(-1), 0, 0, 0)  # PR_SET_PTRACER_ANY (Yama)
Checkpoints = checkpoint.Checkpoints
setattr(Checkpoints, phase, traced(getattr(Checkpoints, phase)))
sys.exit(cli.train_main(sys.argv[5:]))
"""

SAVE, RESTORE = "save", "restore"
FILE_OPS = {  # a file operation -> the syscalls that make it on Linux
    "openat": "openat",
    "write": "write,pwrite64",
    "fsync": "fsync,fdatasync",
    "rename": "rename,renameat,renameat2",
    "mkdir": "mkdir,mkdirat",
    "unlink": "unlink,unlinkat,rmdir",
    "read": "read,pread64",
}
FAILS = "fails"  # a case that must end the run (the first call of an operation the save makes)
CASES = [  # (phase, file operation, error, N, outcome): an even spread of N over the calls
    (SAVE, "openat", "EIO", 1, FAILS),
    (SAVE, "openat", "ENOSPC", 6, None),
    (SAVE, "write", "ENOSPC", 1, FAILS),
    (SAVE, "write", "EIO", 4, None),
    (SAVE, "fsync", "EIO", 1, FAILS),
    (SAVE, "fsync", "ENOSPC", 3, None),
    (SAVE, "rename", "EIO", 1, FAILS),
    (SAVE, "mkdir", "ENOSPC", 1, FAILS),
    (SAVE, "mkdir", "EIO", 3, None),
    (SAVE, "unlink", "EIO", 1, None),  # a save of a run that keeps every epoch deletes nothing
    (RESTORE, "openat", "EIO", 2, FAILS),
    (RESTORE, "read", "EIO", 1, FAILS),
]
# The CLI's own choice of CPU devices (two on two cores) would sum in another order than the
# one device of the reference run trained in this process.
ONE_DEVICE = {**os.environ, "CHARJAX_CPU_DEVICES": "1"}


def _strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("the fault-injection tests need strace: install it (apt-get install strace)",
                    pytrace=False)  # fmt: skip
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a run with one epoch saved, the state of an uninterrupted two-epoch run, its config)."""
    _strace()
    where = tmp_path_factory.mktemp("faults")
    (where / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    cfg = Config(text=str(where / "tiny.txt"), maxlen=10, step=3, hidden=16, batch_size=32,
                 epochs=1, steps_per_call=4, temperatures=())  # fmt: skip
    reference, _ = runner.train_run(cfg.replace(epochs=2), where / "reference", log=quiet)
    runner.train_run(cfg, where / "one", log=quiet)
    return where / "one", reference, cfg


@pytest.mark.slow
@pytest.mark.parametrize("phase, op, error, when, outcome", CASES, ids=lambda v: str(v))
def test_a_failed_file_operation_is_one_line_and_resume_ends_as_if_none_failed(
    runs, phase, op, error, when, outcome, tmp_path
):
    one, reference, cfg = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    driver = [sys.executable, "-c", DRIVER, FILE_OPS[op], error, str(when), phase]
    done = subprocess.run(
        [*driver, "--resume", "--epochs", "2", "--checkpoint-dir", str(run)],
        capture_output=True, text=True, timeout=120, env=ONE_DEVICE,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode != 0 or outcome != FAILS, "the injected error went unnoticed"
    if done.returncode == 0:
        assert lines == [], done.stderr
    else:
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("charjax-train: error: "), done.stderr
        assert "Traceback" not in done.stderr and "TensorStore" not in done.stderr
    saved = Checkpoints(run)
    try:  # epoch 1, saved before, is intact: it restores and its digests verify
        like = state_shape(len(saved.meta(1)["vocab"]), cfg)
        saved.restore(like, 1)
    finally:
        saved.close()
    resumed, _ = runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    assert same_trees(resumed, reference)
    assert Checkpoints(run).epochs() == [1, 2]
