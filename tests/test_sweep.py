"""charjax-sweep: recipes file parsing, runs side by side, the table and sweep.json."""

import json
import sys

import pytest

from charjax import sweep


def test_parse_recipes_skips_comments_and_refuses_repeated_names():
    text = "# budget\nsmall --hidden 8   # comment\n\nbig --hidden 16 --text 'a b.txt'\n"
    assert sweep.parse_recipes(text) == [
        sweep.Recipe("small", ("--hidden", "8")),
        sweep.Recipe("big", ("--hidden", "16", "--text", "a b.txt")),
    ]
    with pytest.raises(ValueError, match="line 2: 'small' is not a new recipe name"):
        sweep.parse_recipes("small --hidden 8\nsmall --hidden 16")
    with pytest.raises(ValueError, match="line 1"):
        sweep.parse_recipes("--hidden 8")


@pytest.mark.slow
def test_sweep_runs_each_recipe_and_tabulates_best_first(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    recipes = tmp_path / "recipes.txt"
    recipes.write_text("wide --hidden 16 --epochs 2\nbroken --hidden -3\n")
    out = tmp_path / "out"
    common = ["--text", str(text), "--maxlen", "10", "--step", "5", "--batch-size", "32",
              "--temperatures", "", "--val-fraction", "0.2"]  # fmt: skip
    rc = sweep.main([str(recipes), "--out", str(out), "--jobs", "2", "--", *common])
    assert rc == 1  # one run failed
    results = json.loads((out / "sweep.json").read_text())
    wide, broken = results["wide"], results["broken"]
    assert wide["returncode"] == 0 and wide["epochs"] == 2
    assert [c["epoch"] for c in wide["curve"]] == [1, 2]
    assert wide["best"] == min(c["val_loss"] for c in wide["curve"])
    assert wide["last"] == wide["curve"][-1]["val_loss"]
    assert broken["returncode"] != 0 and broken["best"] is None
    assert "--hidden" in (out / "broken.log").read_text()
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| wide") or line.startswith("| broken")]
    assert rows[0].startswith("| wide") and rows[1].startswith("| broken")
    assert "failed" in rows[1]


def test_only_names_unknown_recipes(tmp_path, capsys):
    recipes = tmp_path / "recipes.txt"
    recipes.write_text("a --hidden 8\n")
    assert sweep.main([str(recipes), "--only", "a,zz"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("charjax-sweep: error: --only: no recipe named zz") and err.count("\n") == 1
    )
    assert sweep.main([str(recipes), "--job", "2"]) == 2  # never abbreviated, a guess offered
    assert "did you mean --jobs?" in capsys.readouterr().err


# A stand-in for charjax-train: one epoch at once, then it waits; SIGINT saves a second and ends.
_SLOW_TRAIN = """
import json, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[sys.argv.index("--checkpoint-dir") + 1])
out.mkdir(parents=True)
def epoch(n):
    with open(out / "metrics.jsonl", "a") as f:
        record = {"epoch": n, "loss": 2.0, "val_loss": 3.0 - n / 10, "seconds": 1}
        f.write(json.dumps(record) + "\\n")
signal.signal(signal.SIGINT, lambda *_: (epoch(2), sys.exit(130)))
epoch(1)
while True:
    time.sleep(0.02)
"""


@pytest.mark.slow
def test_a_time_limit_stops_the_runs_each_saving_and_tabulates_them_as_cut(
    tmp_path, capsys, monkeypatch
):
    def slow_train(argv):
        return [sys.executable, "-c", _SLOW_TRAIN, *argv]

    monkeypatch.setattr(sweep, "train_command", slow_train)
    recipes = tmp_path / "recipes.txt"
    recipes.write_text("slow --epochs 99\nlater --epochs 99\n")
    out = tmp_path / "out"
    argv = [str(recipes), "--out", str(out), "--jobs", "1", "--time-limit", "1.5"]
    assert sweep.main(argv) == 0  # a cut run is not a failed one
    results = json.loads((out / "sweep.json").read_text())
    assert list(results) == ["slow"]  # "later" never started
    slow = results["slow"]
    assert slow["cut"] and slow["returncode"] == 130 and slow["epochs"] == 2
    assert slow["best"] == pytest.approx(2.8) and slow["best_epoch"] == 2
    printed = capsys.readouterr().out
    assert "1 not started (later)" in printed
    assert "| slow | `--epochs 99` | 2.8000 (2), cut at epoch 2 |" in printed
