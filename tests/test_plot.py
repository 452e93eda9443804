"""`charjax-plot --runs`: several runs' held-out losses in one picture, by wall minutes (each
epoch's recorded `wall_s`) or by epoch."""

import json

import pytest
from util import quiet

from charjax import runner
from charjax.cli import plot_main
from charjax.errors import CharjaxError
from charjax.metrics_log import read_metrics
from charjax.plot import plot_runs


def test_runs_are_drawn_by_wall_minutes_or_epoch(tiny_cfg, tmp_path, capsys):
    runner.train_run(tiny_cfg.replace(temperatures=()), tmp_path / "s0", log=quiet)
    walls = [r["wall_s"] for r in read_metrics(tmp_path / "s0")]
    assert len(walls) == 2 and 0 < walls[0] < walls[1]  # the run's clock, going on
    out = tmp_path / "both.png"
    code = plot_main(["--runs", str(tmp_path / "s0"), str(tmp_path / "s0"), "--labels",
                      "a,b", "--out", str(out), "--title", "a run twice"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_epoch = plot_runs([tmp_path / "s0"], tmp_path / "e.png", by="epoch")
    assert by_epoch.stat().st_size > 1000
    with pytest.raises(CharjaxError, match="give one label a run"):
        plot_runs([tmp_path / "s0"], tmp_path / "x.png", labels=["a", "b"])


def test_a_run_without_wall_times_is_drawn_by_epoch_only(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 2.0, "val_loss": 1.9}))
    with pytest.raises(CharjaxError, match="recorded no wall time .* draw it --by epoch"):
        plot_runs([old], tmp_path / "x.png")
    assert plot_runs([old], tmp_path / "x.png", by="epoch").exists()
    (old / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 2.0}))
    with pytest.raises(CharjaxError, match="no held-out losses"):
        plot_runs([old], tmp_path / "x.png", by="epoch")
