"""Faults at rest and at save time: damaged checkpoints (a truncated array file, a flipped byte
in one, a broken record) are named in one line, resume falls back to the newest intact epoch and
sampling refuses; a save that hits an OS error (a real one: the file-size limit of the process)
ends in one line, leaves nothing half-written and the run resumes once the error is gone."""

import asyncio
import gc
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import pytest
from util import quiet, same_trees

from charjax import cli, integrity, runner
from charjax.checkpoint import TMP_SUFFIX, Checkpoints, SaveFailed
from charjax.cli.common import DropUnretrievedWriteErrors
from charjax.errors import CharjaxError
from charjax.integrity import Damaged


def test_digests_cover_every_part_and_every_byte():
    state = {"params": {"w": jnp.arange(4.0)}, "step": jnp.int32(3)}
    record = integrity.sealed({"format": 3, "epoch": 1}, state)
    assert set(record[integrity.DIGESTS]) == {"params", "step"}
    assert integrity.check_record(json.loads(json.dumps(record)), "x") == record
    assert integrity.check_state(state, record, "x") is state
    flipped = {**state, "params": {"w": jnp.arange(4.0).at[2].set(2.0000002)}}
    with pytest.raises(Damaged, match="x is damaged: its params arrays"):
        integrity.check_state(flipped, record, "x")
    with pytest.raises(Damaged, match="does not match its digest"):
        integrity.check_record({**record, "epoch": 2}, "x")
    with pytest.raises(Damaged, match="lost its digest"):
        integrity.check_record({"format": 3, "epoch": 2}, "x")
    assert integrity.check_record({"format": 2, "epoch": 2}, "x")  # older: unchecked


def _array_files(run, epoch):
    return sorted((run / str(epoch) / "state").glob("ocdbt.process_*/d/*"))


def _truncate(run):  # each array file, as a sync cut short leaves them
    for path in _array_files(run, 2):
        path.write_bytes(path.read_bytes()[:64])


def _flip(run):  # bad storage: a flipped bit every 512 bytes, so that every array is hit
    for path in _array_files(run, 2):
        data = bytearray(path.read_bytes())
        for at in range(256, len(data), 512):
            data[at] ^= 0x10
        path.write_bytes(bytes(data))


def _break_record(run):
    record = run / "2" / "meta" / "metadata"
    record.write_text(record.read_text().replace('"epoch": 2', '"epoch": 7', 1))


@pytest.mark.parametrize("damage", [_truncate, _flip, _break_record], ids=lambda f: f.__name__)
def test_a_damaged_epoch_is_named_skipped_on_resume_and_refused_for_sampling(
    damage, tiny_cfg, tmp_path, capsys
):
    cfg = tiny_cfg.replace(epochs=2, temperatures=())
    reference, _ = runner.train_run(cfg.replace(epochs=3), tmp_path / "reference", log=quiet)
    run = tmp_path / "run"
    runner.train_run(cfg, run, log=quiet)
    damage(run)
    assert cli.sample_main(["--checkpoint-dir", str(run), "--length", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"epoch 2 in {run} is damaged" in err, err
    lines = []
    resumed, history = runner.train_run(
        cfg, run, resume=True, given={"epochs": 3}, log=lines.append
    )
    said = [line for line in lines if "is damaged" in line]
    assert len(said) == 1 and "moved it to 2.damaged" in said[0], lines
    assert f"resuming from epoch 1 in {run}" in lines, lines
    assert [m["epoch"] for m in history] == [2, 3] and same_trees(resumed, reference)
    assert Checkpoints(run).epochs() == [1, 2, 3] and (run / "2.damaged").is_dir()


def _limited(limit: int):
    """A child's file-size limit: writing past `limit` bytes fails with EFBIG (SIGXFSZ off)."""

    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


@pytest.mark.slow
def test_a_save_that_fails_ends_in_one_line_and_the_run_resumes(tiny_cfg, tmp_path):
    ck = tmp_path / "ck"
    runner.train_run(tiny_cfg.replace(epochs=1, temperatures=()), ck, log=quiet)
    train = [sys.executable, "-c", "import sys; from charjax.cli import train_main; "
             "sys.exit(train_main(sys.argv[1:]))", "--checkpoint-dir", str(ck)]  # fmt: skip
    full = subprocess.run(
        [*train, "--resume", "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited(4096),  # every array file of a checkpoint is larger
    )
    assert full.returncode == 2, full.stderr
    assert full.stderr.count("\n") == 1, full.stderr
    assert f"could not save epoch 2 to {ck}: File too large" in full.stderr
    assert "A checkpoint needs about" in full.stderr and "--resume --checkpoint-dir" in full.stderr
    assert Checkpoints(ck).epochs() == [1]
    assert not [p for p in ck.iterdir() if "tmp" in p.name]  # nothing half-written is left
    lines = []
    runner.train_run(tiny_cfg, ck, resume=True, given={"epochs": 3}, log=lines.append)
    assert f"resuming from epoch 1 in {ck}" in lines and Checkpoints(ck).epochs() == [1, 2, 3]


def _unretrieved_task_log(error: Exception, caplog) -> list[str]:
    """What asyncio logs when a task that raised `error` is collected unretrieved (as orbax's
    write tasks are when a save fails)."""

    async def write():
        raise error

    loop = asyncio.new_event_loop()
    task = loop.create_task(write())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del task
        gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_failed_write_tasks_are_not_logged_again_other_task_errors_are(caplog, monkeypatch):
    # the filter every command adds at start-up (`quiet_process`), here alone
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [DropUnretrievedWriteErrors()])
    disk = ValueError(
        "OUT_OF_RANGE: Failed to write 5864 bytes: File too large [os_error_code='27']"
    )
    assert _unretrieved_task_log(disk, caplog) == []  # SaveFailed already said it, once
    caplog.clear()
    logged = _unretrieved_task_log(ValueError("a bug"), caplog)
    assert len(logged) == 1 and logged[0].startswith("Task exception was never retrieved")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted for the test (needs root and the right to mount)."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the file-size-limit test covers saves")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_resume_goes_on(tiny_cfg, small_disk):
    cfg = tiny_cfg.replace(epochs=1, temperatures=(), keep=1)
    run = small_disk / "run"
    runner.train_run(cfg, run, log=quiet)
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (free - 100_000))  # less than a checkpoint is left
    with pytest.raises(SaveFailed) as failed:
        runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    message = str(failed.value)
    assert "\n" not in message and f"could not save epoch 2 to {run}" in message
    assert "No space left on device" in message and "--resume --checkpoint-dir" in message
    assert Checkpoints(run).epochs() == [1]
    assert not [p for p in run.iterdir() if "tmp" in p.name]
    filler.unlink()
    _, history = runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    assert [m["epoch"] for m in history] == [2] and Checkpoints(run).epochs() == [2]


def test_resume_with_only_an_unfinished_save_says_there_is_nothing(tiny_cfg, tmp_path):
    (tmp_path / "partial" / f"3{TMP_SUFFIX}").mkdir(parents=True)  # a save killed midway
    with pytest.raises(CharjaxError, match="nothing to resume: no checkpoints in"):
        runner.train_run(tiny_cfg, tmp_path, resume=True, given={}, log=quiet)
