"""Stopping a training run cleanly on Ctrl-C or SIGTERM (`StopRequest`)."""

from __future__ import annotations

import contextlib
import signal
import threading

import jax


class StopRequest:
    """First Ctrl-C (or SIGTERM): finish the current chunk, save, stop. Second: quit at once,
    except while a checkpoint is being written, which always completes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log):
        self.log, self.requested, self.saving, self._previous = log, False, False, {}

    def __enter__(self):
        # Several processes would each see their own Ctrl-C; there it keeps its default meaning.
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested and not self.saving:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.log("stopping after these batches to save; Ctrl-C again quits without saving")

    @contextlib.contextmanager
    def protect(self):
        """A block (a checkpoint write) that a second Ctrl-C does not cut short."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
