"""strace attached to the running process while one call runs (for tests/fault_server.py): its
injected faults reach that call's syscalls, never the harness's own."""

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PTRACER, PTRACER_ANY = 0x59616D61, ctypes.c_ulong(-1)


def allow_tracing() -> None:
    """Let any process of this user (strace) attach to this one: Yama's ptrace_scope 1 allows
    only an ancestor, and strace is a child."""
    ctypes.CDLL(None).prctl(PR_SET_PTRACER, PTRACER_ANY, 0, 0, 0)


class Tracer:
    """strace attached to this process. Started by `os.posix_spawnp`, which comes back once
    strace runs and leaves this thread no syscall to make before the traced call:
    `subprocess.Popen` reads a pipe until the child has started, and where this process is slow
    to come back from that read, strace has attached first and fails the read itself (it counts
    from its attach), not the traced call's."""

    def __init__(self, argv: list, log: str):
        with open(log, "a") as messages:  # strace's own messages (not the command's stderr)
            dup2 = [(os.POSIX_SPAWN_DUP2, messages.fileno(), 2)]
            self.pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=dup2)
        self.status = None

    def poll(self) -> int | None:
        """strace's exit status, or None while it runs."""
        if self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def stop(self) -> None:
        """Detach strace (SIGTERM) and wait for it to end."""
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            self.status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def wait_until_traced(tracer: Tracer) -> None:
    """Wait until strace has attached to every thread. In a thread of its own: strace counts per
    thread, so these reads spend no count of the threads that save or restore (an injected
    error here only means that strace is there)."""

    def traced(task):
        try:
            with open(f"/proc/self/task/{task}/status") as status:
                return "TracerPid:\t0\n" not in status.read()
        except OSError:
            return False

    def poll():
        while time.monotonic() < deadline and tracer.poll() is None:
            try:
                if all(traced(task) for task in os.listdir("/proc/self/task")):
                    return
            except OSError:
                pass
            time.sleep(0.01)

    deadline = time.monotonic() + 60
    poller = threading.Thread(target=poll)
    poller.start()
    poller.join()
    if time.monotonic() >= deadline or tracer.poll() is not None:
        sys.exit("strace did not attach to the process (is ptrace allowed?)")


def traced(call, nth: int, syscalls: str, strace_out: list, log: str = os.devnull):
    """`call` with strace attached during its `nth` call; strace's own messages go to `log`."""
    calls = [0]

    def run(*args, **kw):
        calls[0] += 1
        if calls[0] != nth:
            return call(*args, **kw)
        trace = ["strace", "-f", "-qq", "-e", f"trace={syscalls}", *strace_out]
        tracer = Tracer([*trace, "-p", str(os.getpid())], log)
        wait_until_traced(tracer)
        try:
            return call(*args, **kw)
        finally:
            tracer.stop()

    return run
