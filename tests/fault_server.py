"""Runs charjax commands with strace attached while one call of a checkpoint method runs (for
tests/test_faults.py). It imports JAX, orbax and charjax once, then forks a process for each
command it is sent: a command costs its own work, not the imports (JAX's backends are started
in the forked process, never here).

Each request on stdin is one JSON line: {"syscalls": "openat,...", "inject": "error=EIO:when=3"
or a folder (a count: the trace of each target goes there), "targets": ["RunDir.save_epoch:1",
...] (the Nth call of Owner.method is traced), "command": "train", "argv": [...], "out": path,
"err": path, "strace": path (strace's own messages)}. It answers with the forked process's
exit status in a line (-9: killed after 3 minutes, hung). strace counts the Nth call of a
syscall from the start of the traced call, per thread and per syscall, not from the start of
Python."""

import json
import os
import re
import signal
import sys
import time

import jax  # noqa: F401  (imported here, once)
import orbax.checkpoint  # noqa: F401
from tracing import allow_tracing, traced

from charjax import checkpoint, cli, inference, run_dir, runner  # noqa: F401
from charjax.cli import sample, score, train  # noqa: F401

OWNERS = {"RunDir": run_dir.RunDir, "Checkpoints": checkpoint.Checkpoints}


def command(request: dict) -> int:
    """In the forked process: output to the request's files, the targets traced, the command
    run -> its exit status."""
    for fd, path in ((1, request["out"]), (2, request["err"])):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    allow_tracing()
    syscalls, inject = request["syscalls"], request["inject"]
    for target in request["targets"]:
        owner, method, nth = re.match(r"(\w+)\.(\w+):(\d+)$", target).groups()
        if inject.startswith("/"):
            out = ["-o", os.path.join(inject, f"{owner}.{method}.trace")]
        else:
            out = ["-o", os.devnull, "-e", f"inject={syscalls}:{inject}"]
        call = getattr(OWNERS[owner], method)
        setattr(OWNERS[owner], method, traced(call, int(nth), syscalls, out, request["strace"]))
    return getattr(cli, f"{request['command']}_main")(request["argv"])


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the command's own process: it ends as a command ends (sys.exit)
            sys.stdin.close()
            sys.exit(command(request))
        print(_wait(pid, timeout=180), flush=True)


def _wait(pid: int, timeout: float) -> int:
    """The exit status of process `pid`, killed if it runs past `timeout` seconds (hung)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.01)


if __name__ == "__main__":
    serve()
