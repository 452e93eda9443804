"""Fault injection (slow tier): strace fails one file operation (the Nth openat, write, fsync,
rename, mkdir or unlink: EIO or ENOSPC) of a resumed run's epoch save, of its `--save-every`
save, or a read of a restore (resume, sample, score). N is an even spread over the calls that
operation makes there, counted in a first traced run. Each case ends in success or in one line
on stderr, leaves the checkpoints saved before intact (their digests verify, nothing is moved
aside), and a plain --resume afterwards ends bit-identical to a run that was never interrupted.
A damaged epoch is one line per process of a two-process resume, and `--debug` shows its
details."""

import collections
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from util import TINY_TEXT, quiet, same_trees

from charjax import runner
from charjax.checkpoint import Checkpoints
from charjax.config import Config
from charjax.step import state_shape

FILE_OPS = {  # a file operation -> the syscalls that make it on Linux
    "openat": "openat",
    "write": "write,writev,pwrite64,pwritev,pwritev2",
    "fsync": "fsync,fdatasync",
    "rename": "rename,renameat,renameat2",
    "mkdir": "mkdir,mkdirat",
    "unlink": "unlink,unlinkat,rmdir",
    "read": "read,readv,pread64,preadv,preadv2",
}
SAVE_OPS = ["openat", "write", "fsync", "rename", "mkdir", "unlink"]
READ_OPS = ["openat", "read"]
# The faulted call of each phase. An epoch save of a resumed run with --save-every 4: it writes
# epoch 2 and deletes the epoch's --save-every save; the second --save-every save of epoch 2
# deletes the first one; the restore of --resume, of charjax-sample and of charjax-score.
TARGETS = {
    "epoch": "RunDir.save_epoch:1",
    "partial": "RunDir.save_partial:2",
    "resume": "Checkpoints.restore:1",
    "params": "Checkpoints.restore_params:1",
}
EPOCH, PARTIAL, RESUME, PARAMS = TARGETS
SPREAD = 3  # values of N per file operation: 1, the last call, and evenly between
TRAIN = ["--resume", "--epochs", "2", "--save-every", "4"]
# The CLI's own choice of CPU devices (two on two cores) would sum in another order than the
# one device of the reference run trained in this process. The compilation cache spares each
# case the compilations (a cache file is never read or written while a fault is injected:
# every computation of a save or restore compiled before, in the run that counts the calls).
ONE_DEVICE = {**os.environ, "CHARJAX_CPU_DEVICES": "1"}


class Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    strace: str  # strace's own messages


# strace's word for a thread it attached to between a syscall's entry and exit: it may then
# take an exit for an entry and fail another call than the one asked (a case to run again)
LOST_TRACK = "ptrace_syscall_info.op"


def _strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("the fault-injection tests need strace: install it (apt-get install strace)",
                    pytrace=False)  # fmt: skip
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a run with epoch 1 saved, the state of an uninterrupted two-epoch run, its config, the
    environment of the commands)."""
    _strace()
    where = tmp_path_factory.mktemp("faults")
    (where / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    cfg = Config(text=str(where / "tiny.txt"), maxlen=10, step=3, hidden=16, batch_size=32,
                 epochs=1, steps_per_call=4, temperatures=())  # fmt: skip
    reference, _ = runner.train_run(cfg.replace(epochs=2), where / "reference", log=quiet)
    runner.train_run(cfg, where / "one", log=quiet)
    env = {**ONE_DEVICE, "JAX_COMPILATION_CACHE_DIR": str(where / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}  # fmt: skip
    return where / "one", reference, cfg, env


@pytest.fixture(scope="module")
def server(runs):
    """tests/fault_server.py, which runs each command in a process of its own, forked after the
    imports."""
    started = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fault_server.py"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=runs[3],
    )  # fmt: skip
    yield started
    started.stdin.close()
    started.wait(timeout=60)


def _driven(server, phases, syscalls, inject, command, argv, run) -> Done:
    """Run `command` with strace attached while the calls of `phases` run (`inject`: strace's
    `error=E:when=N`, or a folder for their traces: a count) -> its exit status and output."""
    out = run.with_name(run.name + ".out")
    request = {
        "syscalls": syscalls, "inject": inject, "command": command,
        "targets": [TARGETS[phase] for phase in phases],
        "argv": [*argv, "--checkpoint-dir", str(run)],
        "out": str(out.with_suffix(".stdout")), "err": str(out.with_suffix(".stderr")),
        "strace": str(out.with_suffix(".strace")),
    }  # fmt: skip
    Path(request["strace"]).write_text("")
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    answer = server.stdout.readline()
    assert answer, "tests/fault_server.py ended (its imports failed?)"
    code = int(answer)
    return Done(code, *(Path(request[name]).read_text() for name in ("out", "err", "strace")))


def _most_calls(trace: str) -> dict:
    """{file operation: the most calls of one of its syscalls by one thread} in an strace -f
    log (the calls of the thread that waits for strace to attach left out)."""
    lines = trace.splitlines()
    waiting = {line.split()[0] for line in lines if '"/proc/self/task"' in line}
    calls = collections.Counter()
    for line in lines:
        thread, call = line.split(None, 1)
        if thread not in waiting and "resumed>" not in call:
            calls[thread, re.match(r"\w+", call).group()] += 1
    return {
        op: max((n for (_, name), n in calls.items() if name in syscalls.split(",")), default=0)
        for op, syscalls in FILE_OPS.items()
    }


@pytest.fixture(scope="module")
def counts(runs, server, tmp_path_factory):
    """{(faulted call, file operation): how many calls to spread N over}, counted in one traced
    resume and one traced charjax-sample (whose restore charjax-score shares)."""
    one, where = runs[0], tmp_path_factory.mktemp("counts")
    found = {}
    for phases, command, argv in [
        ((EPOCH, PARTIAL, RESUME), "train", TRAIN),
        ((PARAMS,), "sample", ["--length", "5"]),
    ]:
        run, logs = where / command, where / f"{command}-traces"
        shutil.copytree(one, run)
        logs.mkdir()
        syscalls = ",".join(FILE_OPS.values())
        done = _driven(server, phases, syscalls, str(logs), command, argv, run)
        assert done.returncode == 0, done.stderr
        for phase in phases:
            log = logs / f"{TARGETS[phase].split(':')[0]}.trace"
            for op, n in _most_calls(log.read_text()).items():
                found[phase, op] = n
    return found


def _spread(most: int) -> list[int]:
    """`SPREAD` values of N evenly over 1..most (fewer when there are fewer calls)."""
    return sorted({1 + round(i * (most - 1) / (SPREAD - 1)) for i in range(SPREAD)})


def _cases(phase, ops, errors):
    """(phase, op, error, index of N in the spread): the errors alternate along the spread,
    starting with another one for every other operation, so each operation sees each error."""
    return [
        (phase, op, errors[(i + k) % len(errors)], i)
        for k, op in enumerate(ops)
        for i in range(SPREAD)
    ]


def _n(counts, phase, op, index) -> int | None:
    spread = _spread(counts[phase, op])
    assert counts[phase, op] > 0, f"{phase} makes no {op} call: nothing to fault"
    return spread[index] if index < len(spread) else None


# what a command writes on stderr when all is well: charjax-sample names what it samples
USUAL_STDERR = {"charjax-sample": "epoch 1, mode "}


def _check_outcome(done, prog: str, op: str, n: int) -> None:
    """Success with nothing on stderr but the command's usual line, or exit 2 with one line.
    The first call of an operation must fail the command, but for a deletion (of what an
    earlier save left, absorbed)."""
    assert done.returncode != 0 or n != 1 or op == "unlink", "the injected error went unnoticed"
    if done.returncode == 0:
        usual = USUAL_STDERR.get(prog)
        lines = [x for x in done.stderr.splitlines() if not (usual and x.startswith(usual))]
        assert not lines and done.stderr.count("\n") <= 1, done.stderr
    else:
        lines = done.stderr.splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"{prog}: error: "), done.stderr
        assert "Traceback" not in done.stderr and "TensorStore" not in done.stderr


def _faulted(runs, server, counts, case, command: str, argv: list, tmp_path):
    """`command` on a copy of the one-epoch run, the Nth call of `case`'s operation failed
    while its phase runs -> (the copy, the finished command, N). case: (phase, op, error,
    index into the spread of N); a spread shorter than the index is skipped (its Ns are
    cases already)."""
    phase, op, error, index = case
    n = _n(counts, phase, op, index)
    if n is None:
        pytest.skip(f"{op} has fewer calls than values of N: each is a case already")
    inject = f"error={error}:when={n}"
    for attempt in range(3):  # again, on a fresh copy, where strace lost track
        run = tmp_path / f"run{attempt}"
        shutil.copytree(runs[0], run)
        done = _driven(server, [phase], FILE_OPS[op], inject, command, argv, run)
        if LOST_TRACK not in done.strace:
            return run, done, n
    pytest.fail(f"strace lost track three times: {done.strace}")


def _faulted_and_checked(runs, server, counts, case, command: str, argv: list, tmp_path):
    """`_faulted`, its outcome checked by `_check_outcome`; where that fails, the message ends
    with the traceback of the same case run again with --debug."""
    run, done, n = _faulted(runs, server, counts, case, command, argv, tmp_path)
    try:
        _check_outcome(done, f"charjax-{command}", case[1], n)
    except AssertionError as e:
        again = _faulted(runs, server, counts, case, command, [*argv, "--debug"],
                         tmp_path / "debug")  # fmt: skip
        debug = again[1].stderr[-4000:]
        raise AssertionError(f"{e}\n--- the same case with --debug:\n{debug}") from None
    return run, done, n


SAVES = _cases(EPOCH, SAVE_OPS, ["EIO", "ENOSPC"]) + _cases(PARTIAL, SAVE_OPS, ["ENOSPC", "EIO"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase, op, error, index", [*SAVES, *_cases(RESUME, READ_OPS, ["EIO"])], ids=str
)
def test_a_failed_file_operation_is_one_line_and_resume_ends_as_if_none_failed(
    runs, server, counts, phase, op, error, index, tmp_path
):
    _, reference, cfg, _ = runs
    case = (phase, op, error, index)
    run, done, n = _faulted_and_checked(runs, server, counts, case, "train", TRAIN, tmp_path)
    saved = Checkpoints(run)
    try:  # epoch 1, saved before, is intact: it restores and its digests verify
        like = state_shape(len(saved.meta(1)["vocab"]), cfg)
        saved.restore(like, 1)
    finally:
        saved.close()
    lines = []
    resumed, _ = runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=lines.append)
    assert same_trees(resumed, reference)
    assert Checkpoints(run).epochs() == [1, 2]
    assert not [line for line in lines if "damaged" in line], lines  # nothing was damaged
    assert not list(run.glob("*.damaged*"))
    assert not list(run.rglob("*.orbax-checkpoint-tmp")), "a failed save's leftovers remain"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "score"])
@pytest.mark.parametrize("op, error, index", [c[1:] for c in _cases(PARAMS, READ_OPS, ["EIO"])])
def test_a_failed_read_of_sample_or_score_is_one_line(
    runs, server, counts, command, op, error, index, tmp_path
):
    _, _, cfg, _ = runs
    argv = ["--length", "5"] if command == "sample" else []
    case = (PARAMS, op, error, index)
    run, done, n = _faulted_and_checked(runs, server, counts, case, command, argv, tmp_path)
    if done.returncode:  # the OS's error, not damage: the checkpoint is left as it is
        assert f"error: could not read epoch 1 in {run}: " in done.stderr, done.stderr
    saved = Checkpoints(run)
    try:
        saved.restore(state_shape(len(saved.meta(1)["vocab"]), cfg), 1)
    finally:
        saved.close()


def _truncate(run, epoch: int) -> None:
    """Cut each array file of `epoch` short, as an unfinished copy leaves them."""
    for path in (run / str(epoch) / "state").glob("ocdbt.process_*/d/*"):
        path.write_bytes(path.read_bytes()[:64])


@pytest.mark.slow
def test_debug_shows_the_details_of_a_damaged_checkpoint(runs, server, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    _truncate(run, 1)
    argv = ["--length", "5"]
    plain = _driven(server, [], "", "", "sample", argv, run)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stderr
    assert plain.stderr.startswith(f"charjax-sample: error: epoch 1 in {run} is damaged: ")
    debug = _driven(server, [], "", "", "sample", [*argv, "--debug"], run)
    assert debug.returncode == 1, debug.stderr  # Python's own end: the traceback
    assert debug.stderr.startswith("Traceback (most recent call last):"), debug.stderr
    assert "charjax.integrity.Damaged: epoch 1 in" in debug.stderr
    assert "The above exception was the direct cause" in debug.stderr  # what orbax said


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_damaged_epoch_is_one_line_per_process_of_a_two_process_resume(runs, tmp_path):
    """Two processes (one CPU device each) resume a run whose latest epoch is damaged: process
    0 names it in one line and moves it aside, process 1 says nothing, both go on from the
    intact epoch before it."""
    one, _, cfg, env = runs
    run = tmp_path / "run"
    shutil.copytree(one, run)
    runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    _truncate(run, 2)
    train = [sys.executable, "-c", "import sys; from charjax.cli import train_main; "
             "sys.exit(train_main(sys.argv[1:]))"]  # fmt: skip
    argv = ["--resume", "--epochs", "2", "--checkpoint-dir", str(run), "--quiet",
            "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]  # fmt: skip
    pair = [
        subprocess.Popen(
            [*train, *argv, "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in (0, 1)
    ]
    try:
        (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in pair)
    except subprocess.TimeoutExpired:
        for p in pair:
            p.kill()
        said = [p.communicate() for p in pair]
        raise AssertionError(f"the pair hung; they said {said}") from None
    assert [p.returncode for p in pair] == [0, 0], err0 + err1
    assert err0.count("\n") == 1 and err0.startswith(f"epoch 2 in {run} is damaged: "), err0
    assert err0.endswith("; moved it to 2.damaged and trying the checkpoint before it\n"), err0
    assert err1 == "", err1
    assert f"resuming from epoch 1 in {run}" in out0
    assert all(line.startswith("[Gloo] ") for line in out1.splitlines()), out1  # not charjax's
    assert Checkpoints(run).epochs() == [1, 2] and (run / "2.damaged").is_dir()


# A process that comes back late from each of its own reads (os.read sleeps first): strace has
# attached by then, so a read of the harness's own while it starts strace would be the one failed
START_LATE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from tracing import allow_tracing, traced

real_read = os.read
def late_read(*args):
    time.sleep(0.5)
    return real_read(*args)
os.read = late_read
ran = []
def read_of(path):
    ran.append(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)
allow_tracing()
inject = ["-o", os.devnull, "-e", "inject=read:error=EIO:when=1"]
try:
    traced(read_of, 1, "read", inject, log=sys.argv[2])(sys.argv[3])
    error = None
except OSError as e:
    error = e.errno
print(json.dumps({"calls": len(ran), "error": error, "after": read_of(sys.argv[3])}))
"""


@pytest.mark.slow
def test_strace_fails_the_traced_calls_read_however_late_the_process_is(tmp_path):
    """The harness starts strace without a read of its own that strace, attaching first, would
    fail: the first read strace fails is the traced call's, and the harness's messages stay
    out of the process's stderr."""
    _strace()
    (tmp_path / "file").write_text("contents")
    log = tmp_path / "strace.log"
    done = subprocess.run(
        [sys.executable, "-c", START_LATE, str(Path(__file__).parent), str(log),
         str(tmp_path / "file")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout) == {"calls": 1, "error": errno.EIO, "after": "contents"}
    assert log.read_text() == ""
