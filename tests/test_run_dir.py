"""A run's folder: metrics.jsonl survives a torn line; the typed record reads and writes the
FORMAT 2 JSON; older formats are refused; the lock; epochs and interrupted epochs saved."""

import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from charjax import run_dir
from charjax.config import Config
from charjax.epoch import Position
from charjax.errors import CharjaxError
from charjax.run_dir import Meta, RunDir, append_metrics, read_metrics


def test_torn_metrics_line_is_closed_not_joined(tmp_path):
    append_metrics(tmp_path, {"epoch": 1, "loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')  # a crash mid-write
    append_metrics(tmp_path, {"epoch": 2, "loss": 1.5})
    assert read_metrics(tmp_path) == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]


META = Meta(Config(hidden=8), "abc", "0" * 64, "ab", 3, {"epoch": 3, "loss": 1.5})


def test_the_record_is_format_3_json():
    record = META.to_json()
    assert list(record) == [
        "format", "epoch", "config", "vocab", "corpus_sha256", "prime", "metrics"
    ]  # fmt: skip
    assert record["format"] == 3 and record["config"]["hidden"] == 8
    assert Meta.from_json(json.loads(json.dumps(record))) == META
    partial = Meta(META.cfg, "abc", "0" * 64, "ab", 4, {}, Position(2, 64, {"loss": 90.0}))
    assert partial.to_json()["position"] == [2, 90.0, 64]  # [chunks, loss sum, windows]
    assert Meta.from_json(partial.to_json()) == partial
    with pytest.raises(CharjaxError, match="written by an older charjax"):
        Meta.from_json({**record, "format": 1})
    older = Meta.from_json({**record, "format": 2})  # another window order: still samples
    assert older.format == 2 and older.to_json()["format"] == 2


class State(NamedTuple):
    params: dict
    step: jax.Array


def _state():
    return State({"w": jnp.arange(3.0)}, jnp.int32(7))


def test_epochs_partials_and_metrics_in_one_folder(tmp_path):
    folder = RunDir(tmp_path / "run", keep=2, lock=True)
    with pytest.raises(CharjaxError, match="another training run"):
        run_dir.lock_directory(tmp_path / "run")
    folder.save_partial(_state(), dataclasses.replace(META, epoch=1))
    assert folder.partial() is not None and folder.partial().epoch == 1
    for epoch in (1, 2, 3):
        meta = Meta(META.cfg, "abc", "0" * 64, "ab", epoch, {"epoch": epoch, "loss": 2.0 / epoch})
        folder.save_epoch(_state(), meta)
    assert folder.epochs() == [2, 3] and folder.partial() is None  # kept 2; partial retired
    assert [m["epoch"] for m in folder.metrics()] == [1, 2, 3]
    assert folder.meta().epoch == 3 and folder.meta(2).metrics["loss"] == 1.0
    (tmp_path / "run" / "metrics.jsonl").unlink()  # died after the checkpoint, before its log
    folder.repair_metrics()
    assert folder.metrics() == [{"epoch": 3, "loss": 2.0 / 3}]
    folder.close()
    run_dir.lock_directory(tmp_path / "run").close()  # released


def test_a_failed_save_of_an_interrupted_epoch_is_reported_though_its_close_fails(
    tmp_path, monkeypatch
):
    """The save's own one-line failure is what the run reports, not the orbax manager's close
    failing after it, and the unfinished folder is still removed; a close that fails after a
    good save is no success."""
    import orbax.checkpoint as ocp

    from charjax import checkpoint

    def failed_write(*args, **kw):
        (tmp_path / "run" / "partial" / "2.orbax-checkpoint-tmp").mkdir(parents=True)
        raise checkpoint.SaveFailed("could not save epoch 1 so far: Input/output error")

    def failed_close(self):
        raise OSError(5, "Input/output error")

    folder = RunDir(tmp_path / "run")
    monkeypatch.setattr(ocp.CheckpointManager, "close", failed_close)
    with pytest.raises(OSError, match="Input/output"):
        folder.save_partial(_state(), dataclasses.replace(META, epoch=1))
    monkeypatch.setattr(checkpoint, "_save", failed_write)
    with pytest.raises(checkpoint.SaveFailed, match="could not save epoch 1 so far"):
        folder.save_partial(_state(), dataclasses.replace(META, epoch=1))
    assert not list((tmp_path / "run").rglob("*.orbax-checkpoint-tmp"))
    monkeypatch.undo()
    folder.close()


def test_a_failed_start_removes_only_the_folders_it_made(tmp_path):
    made = RunDir(tmp_path / "new" / "run", lock=True)
    assert made.created == tmp_path / "new"
    made.close()
    assert not (tmp_path / "new").exists()  # the run's folder and the parent it made
    there = tmp_path / "there"
    there.mkdir()
    kept = RunDir(there / "run", lock=True)
    (there / "run" / "notes.txt").write_text("something of the user's")
    kept.close()
    assert (there / "run" / "notes.txt").exists()  # not only the lock: left alone
    again = RunDir(there, lock=True)
    assert again.created is None
    again.close()
    assert there.is_dir()  # it was there before
