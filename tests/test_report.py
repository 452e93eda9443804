"""What a person sees: the epoch line and the progress bar show every step metric."""

import io
import re
from types import SimpleNamespace

import pytest
from rich.console import Console

from charjax.config import Config
from charjax.report import Reporter, step_metrics

RECORD = {
    "epoch": 2,
    "loss": 1.23456,
    "seconds": 12.34,
    "windows_per_s": 4321.0,
    "lr_scale": 1.0,
    "val_loss": 1.5,
    "val_bits": 2.164,
}


def test_epoch_line_shows_the_step_metrics_then_the_runs():
    lines = []
    Reporter(log=lines.append).epoch_finished(RECORD, 5)
    assert lines == [
        "epoch 2/5  loss 1.2346  val 1.5000 nats (2.164 bits/char)  12.3 s  4,321 windows/s"
    ]
    lines.clear()
    Reporter(log=lines.append).epoch_finished({**RECORD, "grad_norm": 0.5}, 5)
    assert "loss 1.2346  grad_norm 0.5000  val" in lines[0]  # a new metric needs no change here
    assert step_metrics({"epoch": 1, "loss": 2.0, "samples": {}}) == "loss 2.0000"
    lines.clear()
    Reporter(log=lines.append).epoch_finished({**RECORD, "resumed_after": 1800}, 5)
    assert lines[0].endswith("4,321 windows/s (the part after the resume at 1,800 windows)")


def test_the_progress_bar_shows_them_too():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    report = Reporter(progress=True, log=lambda line: None, console=console)
    report.epoch_started(1, 3)
    report.chunk_done(4, 10, 512, {"loss": 2.5, "grad_norm": 0.25}, 2.0)
    report.close()
    screen = out.getvalue()
    assert (
        "4/10" in screen
        and "loss 2.5000 · grad_norm 0.2500" in screen
        and "256 windows/s" in screen
    )


def test_nothing_to_train_says_how_to_go_on():
    lines = []
    report = Reporter(log=lines.append)
    report.nothing_to_train(SimpleNamespace(cfg=Config(epochs=3)), "ck")
    assert lines[-1] == (
        "nothing to train: the run in ck has done all its --epochs 3; to train further, pass a "
        "larger one, e.g. charjax-train --resume --epochs 13 --checkpoint-dir ck"
    )
    report.nothing_to_train(SimpleNamespace(cfg=Config(epochs=3, schedule="cosine")), "ck")
    assert "cosine schedule ends there" in lines[-1] and "--resume" not in lines[-1]


def test_run_time_left_counts_the_epochs_after_this_one():
    report = Reporter(log=lambda line: None)
    report.epoch_started(1, 4)
    report._epoch_began -= 10  # ten seconds into epoch 1, halfway
    assert report.run_left(0.5) == pytest.approx(10 + 3 * 20, abs=0.5)
    report.epoch_started(2, 4)  # epoch 1 took ten seconds of wall time in all
    report._epoch_began -= 5
    assert report.run_left(0.25) == pytest.approx(15 + 2 * 10, abs=0.5)


def test_sequence_runs_count_chars_and_temperatures_read_as_typed():
    lines = []
    samples = {"seed": "ab", "texts": {"0.5": "cd", "1": "ef"}}
    record = {**RECORD, "samples": samples}
    del record["windows_per_s"]
    record["chars_per_s"] = 98765.0
    Reporter(log=lines.append).epoch_finished(record, 5)
    assert lines[0].endswith("12.3 s  98,765 chars/s")
    assert "----- temperature: 0.5\nabcd" in lines and "----- temperature: 1.0\nabef" in lines


@pytest.mark.parametrize("width", [80, 100, 120])
def test_the_progress_bar_fits_a_narrow_terminal(width):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=width)
    report = Reporter(progress=True, log=lambda line: None, console=console)
    report.epoch_started(12, 60)
    report._epoch_began -= 10  # ten seconds into the epoch, 117 of its 1,408 batches done
    means = {"loss": 1.23456, "grad_norm": 0.25}
    report.chunk_done(117, 1408, 117 * 128, means, 10.0)
    report.close()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # no colours, cursor moves
    lines = screen.replace("\r", "\n").splitlines()
    assert max(len(line) for line in lines) <= width
    line = [line for line in lines if "117/" in line][-1]  # the bar after the update
    assert line.startswith("epoch 12/60 ")
    assert re.search(r"117/1,408 .* 0:01:5\d left", line), line  # never left out
    assert "loss 1.2346" in line and "1,498 windows/s" in line  # at 80 columns too
    if width >= 120:
        assert "run 1:" in line


def test_skipped_empty_files_are_named_as_found_and_counted():
    notes = []
    empty = ("a/__init__.py", "b/__init__.py", "b/c/__init__.py", "d.py")
    corpus = SimpleNamespace(ids=[0] * 50, vocab=SimpleNamespace(size=5), left_out="", empty=empty)
    goal = SimpleNamespace(every_position=False)
    run = SimpleNamespace(corpus=corpus, held_out=None, windows=10, epoch=1, cfg=Config(epochs=2),
                          objective=goal)  # fmt: skip
    Reporter(log=notes.append).started(run, 2, "cpu", "ck")
    assert notes[-1] == (
        "skipped 4 empty files (a/__init__.py, b/__init__.py, b/c/__init__.py, ... and 1 more)"
    )
