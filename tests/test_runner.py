"""Whole training runs in process: resume (between and inside epochs) is bit-identical,
checkpoints hold what sampling and resuming need, validation, the divergence guard at work,
and the checks a run makes before it trains."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from util import bound, quiet, same_trees

from charjax import corpus as corpora
from charjax import epoch, evaluate, inference, integrity, runner
from charjax.checkpoint import Checkpoints
from charjax.config import Config
from charjax.errors import CharjaxError
from charjax.metrics_log import read_steps
from charjax.plot import plot_metrics
from charjax.report import Reporter
from charjax.run import merge_resumed, run_keys
from charjax.run_dir import Meta, RunDir, read_metrics
from charjax.step import init_state

REGULARISED = dict(
    dropout=0.2, locked_dropout=True, weight_drop=0.3, recurrent_dropout=0.2, ema=0.9
)
VARIED = dict(
    objective="sequence", carry_state=True, step=10, batch_size=4, vary_length=3, dropout=0.2
)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        pytest.param(REGULARISED, marks=pytest.mark.slow),
        pytest.param(VARIED, marks=pytest.mark.slow),
        pytest.param({**VARIED, "cell": "lnlstm"}, marks=pytest.mark.slow),
        pytest.param(
            {**REGULARISED, "layers": 2, "cell": "mogrifier", "mogrify_rank": 4},
            marks=pytest.mark.slow,
        ),
    ],
    ids=["plain", "regularised", "varied-streams", "lnlstm", "mogrifier"],
)
def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_cfg, tmp_path, extra):
    cfg = dataclasses.replace(tiny_cfg, epochs=3, **extra)
    whole, _ = runner.train_run(cfg, tmp_path / "whole", log=quiet)
    runner.train_run(dataclasses.replace(cfg, epochs=1), tmp_path / "split", log=quiet)
    resumed, history = runner.train_run(
        cfg, tmp_path / "split", resume=True, given={"epochs": 3}, log=quiet
    )
    assert [m["epoch"] for m in history] == [2, 3]
    assert same_trees(whole, resumed)
    assert Checkpoints(tmp_path / "split").epochs() == [1, 2, 3]


def test_checkpoint_holds_what_sampling_and_resuming_need(tiny_cfg, tmp_path):
    state, history = runner.train_run(tiny_cfg, tmp_path, log=quiet)
    ckpts = Checkpoints(tmp_path, create=False)
    meta = ckpts.meta()
    assert meta["epoch"] == 2 and Config.from_dict(meta["config"]) == tiny_cfg
    assert meta["vocab"] == corpora.Vocab.from_text(corpora.read_text(tiny_cfg.text)).chars
    assert len(meta["prime"]) == tiny_cfg.maxlen and len(meta["corpus_sha256"]) == 64
    assert set(meta["metrics"]) >= {"epoch", "loss", "seconds", "windows_per_s", "samples"}
    assert set(meta["metrics"]["samples"]["texts"]) == {"0.5", "1"}
    assert all(len(t) == 20 for t in meta["metrics"]["samples"]["texts"].values())
    like = jax.eval_shape(lambda: state)
    assert same_trees(ckpts.restore(like), state)
    assert same_trees(ckpts.restore(like, 1).params, ckpts.restore(like, 1).params)
    with pytest.raises(CharjaxError, match="available: 1, 2"):
        ckpts.meta(7)


def test_keep_prunes_old_checkpoints(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, epochs=3, keep=2, temperatures=())
    runner.train_run(cfg, tmp_path, log=quiet)
    assert Checkpoints(tmp_path).epochs() == [2, 3]


def test_resume_refuses_conflicts_and_fresh_runs_refuse_full_dirs(tiny_cfg, tmp_path):
    runner.train_run(dataclasses.replace(tiny_cfg, epochs=1), tmp_path, log=quiet)
    with pytest.raises(CharjaxError, match="--resume"):
        runner.train_run(tiny_cfg, tmp_path, log=quiet)
    with pytest.raises(CharjaxError, match="--hidden 32"):
        runner.train_run(tiny_cfg, tmp_path, resume=True, given={"hidden": 32}, log=quiet)
    (tmp_path / "empty").mkdir()  # (a folder that does not exist: `test_a_failed_start...`)
    with pytest.raises(CharjaxError, match="nothing to resume: .*; drop --resume to start a run"):
        runner.train_run(tiny_cfg, tmp_path / "empty", resume=True, log=quiet)


def _tiny_run(cfg, directory, **kw):
    return runner.train_run(cfg, directory, log=quiet, **kw)


def test_validation_each_epoch_is_the_held_out_score(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(temperatures=(), epochs=2)
    state, history = _tiny_run(cfg, tmp_path / "run")
    corpus = corpora.load(cfg)
    held_out = corpus.ids[corpora.split(corpus, cfg) :]
    assert len(held_out) == 92  # 10 % of 912 chars
    expected = evaluate.score_ids(bound(state.params), held_out, maxlen=cfg.maxlen, stride=cfg.step)
    assert history[-1]["val_loss"] == pytest.approx(expected.nats_per_char, rel=1e-6)
    assert history[-1]["val_bits"] == pytest.approx(expected.bits_per_char, rel=1e-6)
    assert [m["val_loss"] for m in read_metrics(tmp_path / "run")] == [
        m["val_loss"] for m in history
    ]
    _, none = _tiny_run(cfg.replace(val_fraction=0.0, epochs=1), tmp_path / "noval")
    assert "val_loss" not in none[0]


@pytest.mark.slow
def test_sequence_runs_are_reproducible_and_learn(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(
        objective="sequence",
        step=10,
        layers=2,
        dropout=0.1,
        optimizer="adam",
        learning_rate=0.01,
        schedule="cosine",
        warmup=3,
        clip_norm=1.0,
        batch_size=8,
        epochs=3,
        temperatures=(0.5,),
    )
    a, ha = _tiny_run(cfg, tmp_path / "a")
    b, hb = _tiny_run(cfg, tmp_path / "b")
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), a, b)))
    assert ha[-1]["samples"] == hb[-1]["samples"]
    assert ha[-1]["loss"] < ha[0]["loss"] and ha[-1]["val_loss"] < ha[0]["val_loss"]
    assert "chars_per_s" in ha[0] and "windows_per_s" not in ha[0]  # every position: chars


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_divergence_guard_restores_and_halves_the_learning_rate(tiny_cfg, tmp_path):
    """A huge learning rate blows the loss up; the guard rolls back and halves it, and no
    saved epoch is ever far above the best one before it, or non-finite."""
    cfg = tiny_cfg.replace(learning_rate=30.0, epochs=4, temperatures=())
    lines = []
    _, history = runner.train_run(cfg, tmp_path / "run", log=lines.append)
    fired = [line for line in lines if "Divergence guard: restored" in line]
    assert fired and "learning rate x0.5" in fired[0]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert history[-1]["lr_scale"] < 1.0
    losses = [m["loss"] for m in history]
    for i in range(1, len(losses)):
        assert losses[i] <= cfg.guard * min(losses[:i])
    ckpts = Checkpoints(tmp_path / "run")
    vocab = len(ckpts.meta()["vocab"])
    like = jax.eval_shape(lambda: init_state(jax.random.key(0), vocab, cfg))
    for number in ckpts.epochs():
        saved = ckpts.restore(like, number)
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(saved.params))
    ckpts.close()


def test_guard_recovers_from_a_nan_epoch(tiny_cfg, tmp_path, monkeypatch):
    """A non-finite epoch is thrown away: training goes on from the last checkpoint at half the
    learning rate, and gives what a run restarted there at half the rate gives."""
    cfg = tiny_cfg.replace(epochs=3, temperatures=())
    real = epoch.iterate
    calls = []

    def blow_up_once(state, ids, starts, key, number, *args, **kw):
        calls.append(number)
        chunks = list(real(state, ids, starts, key, number, *args, **kw))
        last = chunks[-1]
        if calls.count(2) == 1 and number == 2:  # the epoch's loss becomes nan
            nan = dataclasses.replace(last.position, sums={"loss": float("nan")})
            chunks[-1] = last._replace(position=nan)
        yield from chunks

    monkeypatch.setattr(epoch, "iterate", blow_up_once)
    lines = []
    _, history = runner.train_run(cfg, tmp_path / "run", log=lines.append)
    assert calls == [1, 2, 2, 3]
    fired = [line for line in lines if "Divergence guard" in line]
    assert len(fired) == 1 and "epoch 2: the loss became nan" in fired[0]
    assert "restored epoch 1" in fired[0]
    assert [m["lr_scale"] for m in history] == [1.0, 0.5, 0.5]
    assert Checkpoints(tmp_path / "run").epochs() == [1, 2, 3]


@pytest.mark.slow
def test_new_flags_are_checked_and_resume_keeps_the_model(capsys, tiny_cfg, tmp_path):
    bad = [
        (dict(val_fraction=1.0), "--val-fraction must be in [0, 1)"),
        (dict(dropout=1.0), "--dropout must be in [0, 1)"),
        (dict(layers=0), "--layers must be >= 1"),
        (dict(clip_norm=-1.0), "--clip-norm must be >= 0"),
        (dict(objective="all"), "--objective must be one of"),
        (dict(guard=1.0), "--guard must be above 1"),
    ]
    for change, needle in bad:
        with pytest.raises(CharjaxError, match=needle.replace("[", r"\[").replace(")", r"\)")):
            tiny_cfg.replace(**change).check()
    with pytest.raises(CharjaxError, match="holds out 10 chars"):
        _tiny_run(tiny_cfg.replace(val_fraction=0.01), tmp_path / "short")
    cfg = tiny_cfg.replace(epochs=1, temperatures=(), layers=2)
    _tiny_run(cfg, tmp_path / "run")
    with pytest.raises(CharjaxError, match="--layers 1 \\(checkpoint has 2\\)"):
        _tiny_run(cfg, tmp_path / "run", resume=True, given={"layers": 1})
    _, history = _tiny_run(cfg, tmp_path / "run", resume=True, given={"epochs": 2})
    assert [m["epoch"] for m in history] == [2]
    cosine = cfg.replace(schedule="cosine")
    _tiny_run(cosine, tmp_path / "cosine")
    with pytest.raises(CharjaxError, match="over which its cosine schedule decays"):
        _tiny_run(cosine, tmp_path / "cosine", resume=True, given={"epochs": 2})
    with pytest.raises(CharjaxError, match="over which its linear schedule decays"):
        merge_resumed(cfg.replace(schedule="linear"), {"epochs": 2})
    assert merge_resumed(cfg, {"epochs": 2}).epochs == 2  # constant: nothing to stretch
    old = {**Checkpoints(tmp_path / "run").meta(), "format": 1}
    with pytest.raises(CharjaxError, match="written by an older charjax"):
        Meta.from_json(old)


def test_a_run_of_the_older_window_order_samples_but_does_not_resume(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path)
    record = tmp_path / "1" / "meta" / "metadata"
    older = {**json.loads(record.read_text()), "format": 2}  # as written before digests
    del older[integrity.DIGESTS], older[integrity.RECORD]
    record.write_text(json.dumps(older))
    with pytest.raises(CharjaxError, match="shuffled windows in another order"):
        _tiny_run(cfg, tmp_path, resume=True, given={"epochs": 2})
    assert inference.load(tmp_path).meta.format == 2  # sampling and scoring still read it


@pytest.mark.parametrize("streams", [False, True], ids=["windows", "carried-streams"])
@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_mid_epoch_resume_in_process(tiny_cfg, tmp_path, streams):
    """An epoch stopped after one chunk, saved as a partial, resumes to the uninterrupted result
    (with --carry-state, the streams' LSTM state is saved and restored too); a second
    interruption of the same epoch saves again; the chunk size cannot change meanwhile."""
    cfg = tiny_cfg.replace(epochs=2, temperatures=(), steps_per_call=2)
    if streams:
        cfg = cfg.replace(objective="sequence", carry_state=True, step=10, batch_size=6)
    whole, _ = runner.train_run(cfg, tmp_path / "whole", log=quiet)
    first, _ = runner.train_run(cfg.replace(epochs=1), tmp_path / "split", log=quiet)
    corpus, ids, split = _corpus_arrays(cfg)
    data_key = run_keys(cfg.seed)[1]
    folder = RunDir(tmp_path / "split")
    meta = folder.meta()
    for chunks in (1, 2):  # interrupted twice in the same epoch: the newer save wins
        fresh = jax.tree.map(np.array, first)  # the epoch consumes (donates) its state
        for done in epoch.iterate(fresh, ids, split, data_key, 2, cfg):
            if done.position.chunks == chunks:
                break
        state, pos = done.state, done.position
        assert pos.chunks == chunks and not done.finished
        folder.save_partial(state, dataclasses.replace(meta, epoch=2, position=pos))
    assert folder.checkpoints.partial_meta()["position"][0] == 2
    folder.close()
    with pytest.raises(CharjaxError, match="--steps-per-call 2"):
        runner.train_run(
            cfg, tmp_path / "split", resume=True, given={"steps_per_call": 3}, log=quiet
        )
    rates = []
    record = lambda self, done, total, windows, means, seconds: rates.append(windows)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reporter, "chunk_done", record)
        resumed, history = runner.train_run(
            cfg, tmp_path / "split", resume=True, given={"epochs": 2}, log=quiet, progress=True
        )
    assert [m["epoch"] for m in history] == [2] and same_trees(resumed, whole)
    per_chunk = 2 * cfg.batch_size  # the bar's rate counts what this process trained
    rate = "chars_per_s" if streams else "windows_per_s"
    assert rates[0] == per_chunk and history[0][rate] > 0
    assert not (tmp_path / "split" / "partial").exists()


def _corpus_arrays(cfg):
    corpus = corpora.load(cfg)
    return corpus, corpus.ids, corpora.split(corpus, cfg)


def test_resume_keeps_the_runs_own_keep(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(epochs=2, keep=1, temperatures=())
    runner.train_run(cfg, tmp_path, log=quiet)
    runner.train_run(Config(), tmp_path, resume=True, given={"epochs": 3}, log=quiet)
    assert Checkpoints(tmp_path).epochs() == [3]


def test_a_run_says_where_its_model_is_and_a_finished_run_says_so(tiny_cfg, tmp_path):
    lines = []
    cfg = tiny_cfg.replace(epochs=2, temperatures=())
    _, history = runner.train_run(cfg, tmp_path, log=lines.append)
    best = min(history, key=lambda m: m["val_loss"])
    assert lines[-1] == (
        f"done: epoch 2 in {tmp_path}, held-out loss {history[-1]['val_loss']:.4f} nats/char "
        f"(best {best['val_loss']:.4f}, epoch {best['epoch']}). Sample from it with: "
        f"charjax-sample --checkpoint-dir {tmp_path}"
    )
    lines.clear()
    given = {"temperatures": (0.5, 1.0)}
    state, history = runner.train_run(cfg, tmp_path, resume=True, given=given, log=lines.append)
    assert history == [] and lines[-1].startswith("nothing to train: the run in")
    assert f"charjax-train --resume --epochs 12 --checkpoint-dir {tmp_path}" in lines[-1]
    assert "  using --temperatures 0.5,1.0 (was '')" in lines  # as typed, not a Python repr


@pytest.mark.slow
def test_max_chars_that_drops_chars_says_which(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abc abc abc abc\n" * 10 + "xyz Äq", encoding="utf-8")
    cfg = Config(text=str(text), maxlen=5, hidden=8, batch_size=8, epochs=1, temperatures=(),
                 max_chars=150)  # fmt: skip
    lines = []
    runner.train_run(cfg, tmp_path / "run", log=lines.append)
    said = [line for line in lines if line.startswith("--max-chars")]
    assert said == [
        "--max-chars 150 leaves out 5 of the file's distinct chars, which the model will not "
        "know: q x y z ä"
    ]
    assert corpora.load(cfg.replace(max_chars=0)).left_out == ""


@pytest.mark.slow
def test_step_records_evaluations_and_saves_inside_epochs(tiny_cfg, tmp_path, monkeypatch):
    """--log-every and --eval-every add step records to metrics.jsonl (the epochs' records stay
    as they were); a crash mid-epoch with --save-every resumes from the last save and ends
    bit-identical to an uninterrupted run."""
    cfg = tiny_cfg.replace(epochs=2, temperatures=(), steps_per_call=1, eval_chars=200)
    whole, _ = runner.train_run(cfg, tmp_path / "whole", log=quiet)
    lines = []
    logged, history = runner.train_run(
        cfg.replace(log_every=2, eval_every=4), tmp_path / "logged", log=lines.append
    )
    assert same_trees(logged, whole)  # records and evaluations change nothing
    steps = read_steps(tmp_path / "logged")
    per_epoch = history[0]["steps"]
    assert [r["step"] for r in steps] == list(range(2, 2 * per_epoch + 1, 2))
    assert all(("val_loss" in r) == (r["step"] % 4 == 0) for r in steps)
    assert [r["epoch"] for r in read_metrics(tmp_path / "logged")] == [1, 2]
    assert sum("held-out" in line and line.startswith("step ") for line in lines) == len(
        [r for r in steps if "val_loss" in r]
    )
    png = plot_metrics(tmp_path / "logged")  # by epoch and by optimizer step
    assert png.stat().st_size > 10_000
    real, killed_at = epoch.iterate, 7

    def crash(state, ids, split, key, number, *args, **kw):
        for i, done in enumerate(real(state, ids, split, key, number, *args, **kw)):
            if number == 2 and i == killed_at:
                raise SystemExit("killed")  # like kill -9: nothing saved on the way out
            yield done

    monkeypatch.setattr(epoch, "iterate", crash)
    saving = cfg.replace(save_every=3)
    with pytest.raises(SystemExit):
        runner.train_run(saving, tmp_path / "crashed", log=quiet)
    folder = RunDir(tmp_path / "crashed")
    partial = folder.partial()
    folder.close()
    lost = killed_at - partial.position.chunks  # one step a chunk
    assert partial.epoch == 2 and 0 <= lost < 3  # fewer than --save-every steps were lost
    monkeypatch.setattr(epoch, "iterate", real)
    resumed, _ = runner.train_run(Config(), tmp_path / "crashed", resume=True, given={}, log=quiet)
    assert same_trees(resumed, whole)


@pytest.mark.slow
def test_keep_best_outlives_rotation_and_patience_stops_a_stalled_run(
    tiny_cfg, tmp_path, monkeypatch, capsys
):
    """Held-out losses 3, 2, 2.5, 2.6, ... (a fake validation): epoch 2 is the best, kept in
    best/ though --keep 1 rotates it away; --patience 2 stops after epoch 4; sample and score
    --best read epoch 2, the averaged parameters of an --ema run."""
    from charjax import cli

    losses = iter(np.repeat([3.0, 2.0, 2.5, 2.6, 2.7, 2.8], 2))  # the average's, then the raw
    monkeypatch.setattr(
        evaluate, "validate", lambda params, ids, cfg, **_: evaluate.Score(next(losses) * 10, 10)
    )
    cfg = tiny_cfg.replace(epochs=6, keep=1, keep_best=True, patience=2, ema=0.5)
    lines = []
    _, history = runner.train_run(cfg, tmp_path, log=lines.append)
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert any("not improved for 2 epochs" in line and "epoch 2" in line for line in lines)
    assert Checkpoints(tmp_path).epochs() == [4]
    best = inference.load(tmp_path, best=True)
    assert best.meta.epoch == 2 and best.meta.metrics["val_loss"] == 2.0
    state = Checkpoints(tmp_path / "best").restore(jax.eval_shape(lambda: _state_like(cfg)))
    assert same_trees(best.params, state.ema) and not same_trees(best.params, state.params)
    assert cli.sample_main(["--checkpoint-dir", str(tmp_path), "--best", "--length", "5"]) == 0
    assert "epoch 2" in capsys.readouterr().err
    _, again = runner.train_run(cfg, tmp_path, resume=True, log=lines.append)
    assert again == [] and "not improved" in lines[-2]  # a resumed stalled run stops at once


def _state_like(cfg):
    vocab = corpora.load(cfg).vocab.size
    return init_state(jax.random.key(0), vocab, cfg)


def test_best_without_keep_best_is_one_line(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    runner.train_run(cfg, tmp_path, log=quiet)
    with pytest.raises(CharjaxError, match="without --keep-best"):
        inference.load(tmp_path, best=True)
    with pytest.raises(CharjaxError, match="--val-fraction > 0"):
        cfg.replace(val_fraction=0.0, keep_best=True).check()


def test_a_failed_start_leaves_no_folder_and_resume_needs_one(tmp_path):
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\x00\x01\x02 not text")
    with pytest.raises(CharjaxError, match="looks like a binary file"):
        runner.train_run(Config(text=str(binary)), tmp_path / "runs" / "a", log=quiet)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(CharjaxError, match=r"^no run to resume in .*nowhere: the folder does"):
        runner.train_run(Config(), tmp_path / "nowhere", resume=True, log=quiet)
    assert not (tmp_path / "nowhere").exists()
