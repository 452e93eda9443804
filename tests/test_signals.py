"""Ctrl-C and SIGTERM during training: stop after the chunk, never inside a save."""

import os
import signal

import pytest

from charjax.signals import StopRequest


def test_sigterm_is_a_ctrl_c_and_saves_are_never_cut_short():
    said = []
    with StopRequest(said.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # first: ask to stop after the current batches
        assert stop.requested and len(said) == 1
        with stop.protect():
            os.kill(os.getpid(), signal.SIGINT)  # second, while saving: the save goes on
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # second, otherwise: quit now
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
