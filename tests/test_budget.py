"""`--minutes`: the epoch count chosen from the run's own timings, said, recorded, kept by a
resume, and from then on the run of `--epochs N`."""

import pytest
from util import quiet, same_trees

from charjax import budget, runner
from charjax.checkpoint import Checkpoints
from charjax.cli.train import config_of, train_parser
from charjax.errors import CharjaxError, Interrupted
from charjax.run_dir import RunDir

# an epoch of 10 chunks of 2 s, 5 s validation, 2 s samples, 1 s save = 28 s, after 40 s
TIMINGS = budget.Timings(chunk=2.0, chunks=10, validation=5.0, samples=2.0, save=1.0, spent=40.0)


def test_the_count_is_the_most_epochs_that_fit_after_the_setup():
    assert TIMINGS.epoch == 28.0
    spare = 28 * (1 + budget.MARGIN)  # an epoch as the choice counts it
    assert budget.choose(20, TIMINGS) == int((1200 - 40) // spare) == 39  # not 41 = 1160 // 28
    assert budget.choose(1, TIMINGS) == 0  # 60 s: 20 left, not one epoch
    assert budget.choose(40 / 60, TIMINGS) == 0  # nothing left after the setup
    assert budget.choose((40 + spare) / 60, TIMINGS) == 1  # exactly one
    assert budget.choose((40 + 28) / 60, TIMINGS) == 0  # one, without its spare: not chosen
    assert budget.message(20, 40, TIMINGS) == (
        "20 minutes fit 40 epochs of ~28 s here (after 40 s of compiling and timing); the "
        "same run again: --epochs 40"
    )


def test_a_budget_too_small_for_one_epoch_is_one_line_naming_the_budget_that_fits():
    with pytest.raises(CharjaxError) as e:
        budget.fitted(1, TIMINGS)
    line = str(e.value)
    assert "\n" not in line and "--minutes 1 fits no whole epoch" in line
    assert "~28 s" in line and "--minutes 2 or more" in line  # 40 + 28 s: two minutes


def _patched(monkeypatch, timings, calls=None):
    def probe(this, mesh, folder, started, score):
        if calls is not None:
            calls.append(this.cfg.epochs)
        return timings

    monkeypatch.setattr(budget, "probe", probe)


def test_a_run_with_minutes_is_the_run_of_the_epochs_it_chose_and_records_them(
    tiny_cfg, tmp_path, monkeypatch
):
    """Given timings that fit 3 epochs: the run says so, trains 3 under a cosine schedule set
    for 3 (the parameters are bit-identical to --epochs 3), and its checkpoints record 3."""
    cfg = tiny_cfg.replace(schedule="cosine", warmup=2, temperatures=())
    three = budget.Timings(chunk=1.0, chunks=4, validation=1.0, samples=0.0, save=1.0, spent=0.0)
    _patched(monkeypatch, three)
    lines = []
    timed, history = runner.train_run(cfg.replace(minutes=0.32), tmp_path / "timed",
                                      log=lines.append)  # fmt: skip
    assert "0.32 minutes fit 3 epochs of ~6 s here" in lines[0] and "--epochs 3" in lines[0]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    saved = RunDir(tmp_path / "timed").meta().cfg
    assert (saved.epochs, saved.minutes) == (3, 0.32)
    counted, _ = runner.train_run(cfg.replace(epochs=3), tmp_path / "counted", log=quiet)
    assert same_trees(timed, counted)
    assert not (tmp_path / "timed" / budget.PROBE_FOLDER).exists()


def test_a_resumed_run_keeps_its_count_and_refuses_a_new_budget(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg.replace(schedule="cosine", temperatures=(), minutes=1.0)
    three = budget.Timings(chunk=1.0, chunks=5, validation=0.0, samples=0.0, save=0.0, spent=0.0)
    calls = []
    _patched(monkeypatch, budget.Timings(**{**three.__dict__, "chunk": 3.6}), calls)
    whole, _ = runner.train_run(cfg, tmp_path / "whole", log=quiet)  # 60 s / 18.9 s: 3 epochs
    assert RunDir(tmp_path / "whole").meta().cfg.epochs == 3

    finish = runner._finish_epoch

    def stop_after_one(this, number, *args):
        finish(this, number, *args)
        if number == 1:
            raise Interrupted("stopped after epoch 1")

    monkeypatch.setattr(runner, "_finish_epoch", stop_after_one)
    with pytest.raises(Interrupted):
        runner.train_run(cfg, tmp_path / "split", log=quiet)
    monkeypatch.setattr(runner, "_finish_epoch", finish)
    _patched(monkeypatch, three, calls)  # a resume that timed again would choose 11 epochs
    with pytest.raises(CharjaxError, match="--minutes chooses the epoch count of a new run"):
        runner.train_run(cfg, tmp_path / "split", resume=True, given={"minutes": 2.0}, log=quiet)
    resumed, history = runner.train_run(cfg, tmp_path / "split", resume=True, given={},
                                        log=quiet)  # fmt: skip
    assert [m["epoch"] for m in history] == [2, 3] and calls == [cfg.epochs] * 2
    assert same_trees(whole, resumed)
    assert Checkpoints(tmp_path / "split").epochs() == [1, 2, 3]


def _config(*argv):
    return config_of(train_parser().parse_args(list(argv)))[0]


def test_minutes_beside_epochs_is_refused_and_a_typed_count_overrides_a_presets_budget():
    with pytest.raises(CharjaxError, match="give one of them"):
        _config("--minutes", "3", "--epochs", "2")
    assert (_config("--minutes", "3").minutes, _config("--minutes", "3").epochs) == (3.0, 60)
    preset = _config("--preset", "quality")
    assert preset.minutes == 20 and preset.epochs == 60  # the run chooses its count
    counted = _config("--preset", "quality", "--epochs", "13")
    assert (counted.minutes, counted.epochs) == (0.0, 13)
    with pytest.raises(CharjaxError, match="--minutes must be"):
        _config("--minutes", "-1").check()


def test_the_probe_times_the_run_without_touching_it(tiny_cfg, tmp_path):
    """The real probe on a tiny run: positive figures, the run's own state still usable (the
    probe trained a copy), and no trace left in the folder."""
    from charjax import parallel, run

    cfg = tiny_cfg.replace(minutes=1.0)
    folder = RunDir(tmp_path / "run")
    this = run.fresh(cfg, folder)
    t = budget.probe(this, parallel.data_mesh(), folder, 0.0, runner._held_out_score)
    assert t.chunk > 0 and t.chunks == this.windows // (cfg.batch_size * cfg.steps_per_call) + (
        this.windows % (cfg.batch_size * cfg.steps_per_call) > 0
    )
    assert t.validation > 0 and t.samples > 0 and t.save > 0 and t.spent > 0
    assert float(this.state.params["dense"]["bias"].sum()) == 0.0  # alive, untrained
    assert [p.name for p in folder.directory.iterdir() if not p.name.startswith(".lock")] == []
    folder.close()


def test_an_epoch_of_one_chunk_is_timed_by_that_chunk_compile_included(tiny_cfg, tmp_path):
    """With nothing after the first chunk to time, its own time (compile included) is the
    estimate: an upper bound, never the ~0 s of an empty measurement. A chunk size no other
    test uses, so its compile is this test's."""
    from charjax import parallel, run

    cfg = tiny_cfg.replace(steps_per_call=997)
    folder = RunDir(tmp_path / "run")
    this = run.fresh(cfg, folder)
    chunk, chunks = budget._time_chunks(this, parallel.data_mesh())
    assert chunks == 1 and chunk > 0.05  # a compile takes longer than 50 ms
    folder.close()
