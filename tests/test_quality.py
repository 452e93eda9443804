"""Held-out validation, scoring, the every-position objective, stacked layers, dropout, clipping,
learning-rate schedules and the divergence guard."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charjax import checkpoint, cli, data, lstm, model, runner, score, start, train
from charjax.checkpoint import Checkpoints
from charjax.config import Config
from charjax.errors import CharjaxError
from charjax.report import read_metrics

quiet = lambda *a: None  # noqa: E731


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(20, 5000),
    fraction=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    maxlen=st.integers(1, 15),
    step=st.integers(1, 7),
)
def test_no_training_window_reaches_the_held_out_tail(n, fraction, maxlen, step):
    split = data.split_point(n, fraction)
    assert split == (n if fraction == 0 else int(n * (1 - fraction)))
    starts = data.window_starts(split, maxlen, step)
    if len(starts):
        assert starts.max() + maxlen < split  # the last target (of either objective) is inside


def test_default_split_of_nietzsche(nietzsche_dir):
    cfg = Config()
    corpus = runner.load_corpus(cfg)
    split = start.split_of(corpus, cfg)
    assert (split, len(corpus.ids) - split) == (540_810, 60_091)
    assert len(data.window_starts(split, cfg.maxlen, cfg.step)) == 180_250
    assert len(data.window_starts(len(corpus.ids), cfg.maxlen, cfg.step)) == 200_281  # --val 0


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return model.init_params(jax.random.key(seed), vocab, hidden, layers)


def _nll(logits, target) -> float:
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(target)))


def test_window_score_is_the_mean_loss_of_every_window():
    params = _params()
    ids = np.asarray(jax.random.randint(jax.random.key(1), (40,), 0, 9), np.int32)
    maxlen = 5
    starts = np.arange(len(ids) - maxlen)
    windows = jnp.asarray(ids[starts[:, None] + np.arange(maxlen)])
    _, logits = model.forward(params, windows)  # one window per row, each from a zero state
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, ids[starts + maxlen])
    got = score.score_ids(params, ids, mode="window", maxlen=maxlen, batch_size=8)
    assert got.chars == len(expected) == 35
    np.testing.assert_allclose(got.nats_per_char, np.mean(expected), rtol=1e-5)
    assert got.bits_per_char == pytest.approx(got.nats_per_char / math.log(2))
    assert got.perplexity == pytest.approx(math.exp(got.nats_per_char))
    strided = score.score_ids(params, ids, mode="window", maxlen=maxlen, stride=3, batch_size=8)
    np.testing.assert_allclose(strided.nats_per_char, np.mean(expected[::3]), rtol=1e-5)
    np.testing.assert_allclose(  # and a window is the same read alone as in a batch
        expected[7], _nll(model.forward(params, windows[7:8])[1][0], ids[7 + maxlen]), rtol=1e-6
    )


@pytest.mark.parametrize("layers", [1, 2])
def test_stateful_score_reads_the_text_once_whatever_the_chunk(layers):
    params = _params(layers=layers)
    ids = np.asarray(jax.random.randint(jax.random.key(2), (53,), 0, 9), np.int32)
    _, logits = model.forward(params, jnp.asarray(ids[None, :-1]), all_steps=True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[0], ids[1:]).mean()
    for chunk in (7, 52, 1024):
        got = score.score_ids(params, ids, mode="stateful", chunk=chunk)
        assert got.chars == 52
        np.testing.assert_allclose(got.nats_per_char, expected, rtol=1e-5)


def test_every_position_logits_equal_the_last_step_of_each_prefix():
    params = _params(layers=2, seed=3)
    ids = jax.random.randint(jax.random.key(4), (2, 6), 0, 9)
    _, every = model.forward(params, ids, all_steps=True)
    assert every.shape == (2, 6, 9)
    for t in (1, 4, 6):
        _, last = model.forward(params, ids[:, :t])
        np.testing.assert_allclose(every[:, t - 1], last, atol=1e-6)


def test_fast_gradients_of_stacked_layers_and_all_steps_equal_autodiff():
    """The hand-written backward (outputs at every step, stacked layers, a given initial carry)
    against autodiff of the plain masked scan."""
    params = _params(vocab=11, hidden=16, layers=2, seed=5)
    ids = jax.random.randint(jax.random.key(6), (4, 9), 0, 11)
    probe = jax.random.normal(jax.random.key(7), (4, 9, 11))
    carry = tuple(
        tuple(jax.random.normal(jax.random.key(8 + i), (2, 4, 16)) * 0.5) for i in range(2)
    )

    def objective(p, valid):
        _, logits = model.forward(p, ids, carry, valid, all_steps=True)
        return jnp.sum(jnp.sin(logits) * probe)

    fast = jax.jit(jax.grad(objective))(params, None)
    plain = jax.jit(jax.grad(objective))(params, jnp.ones(9, bool))
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert np.abs(np.asarray(a)).max() > 1e-3


def test_layers_shapes_and_names():
    params = _params(vocab=7, hidden=5, layers=3)
    assert sorted(params) == ["dense", "lstm", "lstm_1", "lstm_2"]
    assert params["lstm"]["kernel"].shape == (7, 20)
    assert params["lstm_2"]["kernel"].shape == (5, 20)
    assert model.layers_of(params) == 3 and model.shape_of(params) == (7, 5)
    assert params["lstm_1"]["bias"][5:10].tolist() == [1.0] * 5  # forget gate starts open


def test_sequence_loss_counts_every_predicted_char(tiny_cfg):
    cfg = tiny_cfg.replace(objective="sequence", val_fraction=0.0)
    corpus = runner.load_corpus(cfg)
    params = train.init_state(jax.random.key(0), corpus.vocab.size, cfg).params
    ids = jnp.asarray(corpus.ids)
    starts = jnp.array([0, 7, 20])
    inputs, targets = train.gather(ids, starts, cfg)
    assert inputs.shape == targets.shape == (3, cfg.maxlen)
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    np.testing.assert_array_equal(targets[:, -1], ids[starts + cfg.maxlen])
    weights = jnp.array([1.0, 1.0, 0.0])
    total = train.loss_sum(params, inputs, targets, weights, cfg)
    _, logits = model.forward(params, inputs, all_steps=True)
    per_char = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(total, per_char[:2].sum(), rtol=1e-5)


def test_dropout_is_keyed_scaled_and_off_without_a_key():
    x = jnp.ones((200, 50))
    a = model.apply_dropout(x, 0.3, jax.random.key(0))
    assert jnp.array_equal(a, model.apply_dropout(x, 0.3, jax.random.key(0)))
    assert not jnp.array_equal(a, model.apply_dropout(x, 0.3, jax.random.key(1)))
    kept = np.asarray(a) != 0
    assert abs(kept.mean() - 0.7) < 0.02 and np.allclose(np.asarray(a)[kept], 1 / 0.7)
    assert model.apply_dropout(x, 0.3, None) is x
    params = _params(layers=2)
    ids = jnp.array([[1, 2, 3, 4]])
    plain = model.forward(params, ids)[1]
    assert jnp.array_equal(model.forward(params, ids, dropout=0.5)[1], plain)  # no key
    assert not jnp.array_equal(
        model.forward(params, ids, dropout=0.5, key=jax.random.key(0))[1], plain
    )


def test_dropout_steps_are_deterministic_per_step_and_differ_from_no_dropout(tiny_cfg):
    cfg = tiny_cfg.replace(dropout=0.3, layers=2)
    corpus = runner.load_corpus(cfg)
    ids = jnp.asarray(corpus.ids)
    inputs, targets = data.gather_windows(ids, jnp.arange(8), cfg.maxlen)
    weights = jnp.ones(8)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, cfg)
    context = train.StepContext(jax.random.key(5), 100)
    step = jax.jit(train.train_step, static_argnames="cfg")
    a, loss_a = step(state, inputs, targets, weights, cfg, None, context)
    b, loss_b = step(state, inputs, targets, weights, cfg, None, context)
    c, loss_c = step(state, inputs, targets, weights, cfg.replace(dropout=0.0), None, context)
    assert float(loss_a) == float(loss_b) and float(loss_a) != float(loss_c)
    assert jnp.array_equal(a.params["dense"]["kernel"], b.params["dense"]["kernel"])


def test_learning_rate_schedules():
    cfg = Config(schedule="cosine", warmup=10, learning_rate=1.0)
    f = [float(train.lr_factor(cfg, s, 110)) for s in (0, 4, 9, 10, 60, 110, 500)]
    assert f[:3] == pytest.approx([0.1, 0.5, 1.0])
    assert f[3] == pytest.approx(1.0)
    assert f[4] == pytest.approx(train.MIN_LR_FRACTION + (1 - train.MIN_LR_FRACTION) * 0.5)
    assert f[5] == f[6] == pytest.approx(train.MIN_LR_FRACTION)
    flat = Config(warmup=4)
    assert [float(train.lr_factor(flat, s, 0)) for s in (0, 3, 99)] == [0.25, 1.0, 1.0]


def test_clipping_and_adam_are_what_the_optimizer_does():
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    big = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50: clipped to 5
    small = {"w": jnp.array([0.6, 0.0, 0.8])}  # norm 1: kept

    def two_steps(opt, first, second):
        state = opt.init(params)
        _, state = opt.update(first, state, params)
        return opt.update(second, state, params)[0]["w"]

    cfg = Config(optimizer="adam", clip_norm=5.0, learning_rate=0.1)
    ref = optax.adam(0.1, eps=cfg.epsilon)
    got = two_steps(train.make_optimizer(cfg), big, small)
    np.testing.assert_allclose(got, two_steps(ref, {"w": big["w"] / 10}, small), rtol=1e-6)
    assert not np.allclose(got, two_steps(ref, big, small), rtol=1e-3)


def _tiny_run(cfg, directory, **kw):
    return runner.train_run(cfg, directory, log=quiet, **kw)


def test_validation_each_epoch_is_the_held_out_score(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(temperatures=(), epochs=2)
    state, history = _tiny_run(cfg, tmp_path / "run")
    corpus = runner.load_corpus(cfg)
    held_out = corpus.ids[start.split_of(corpus, cfg) :]
    assert len(held_out) == 92  # 10 % of 912 chars
    expected = score.score_ids(state.params, held_out, maxlen=cfg.maxlen, stride=cfg.step)
    assert history[-1]["val_loss"] == pytest.approx(expected.nats_per_char, rel=1e-6)
    assert history[-1]["val_bits"] == pytest.approx(expected.bits_per_char, rel=1e-6)
    assert [m["val_loss"] for m in read_metrics(tmp_path / "run")] == [
        m["val_loss"] for m in history
    ]
    _, none = _tiny_run(cfg.replace(val_fraction=0.0, epochs=1), tmp_path / "noval")
    assert "val_loss" not in none[0]


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


def test_divergence_guard_restores_and_halves_the_learning_rate(tiny_cfg, tmp_path):
    """A huge learning rate blows the loss up; the guard rolls back and halves it, and no
    saved epoch is ever far above the best one before it, or non-finite."""
    cfg = tiny_cfg.replace(learning_rate=10.0, epochs=4, temperatures=())
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
    like = jax.eval_shape(lambda: train.init_state(jax.random.key(0), vocab, cfg))
    for epoch in ckpts.epochs():
        saved = ckpts.restore(like, epoch)
        assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(saved.params))
    ckpts.close()


def test_guard_recovers_from_a_nan_epoch(tiny_cfg, tmp_path, monkeypatch):
    """A non-finite epoch is thrown away: training goes on from the last checkpoint at half the
    learning rate, and gives what a run restarted there at half the rate gives."""
    cfg = tiny_cfg.replace(epochs=3, temperatures=())
    real = train.train_epoch
    calls = []

    def blow_up_once(state, *args, **kw):
        calls.append(args[3])  # the epoch
        state, loss = real(state, *args, **kw)
        return state, (float("nan") if calls.count(2) == 1 and args[3] == 2 else loss)

    monkeypatch.setattr(train, "train_epoch", blow_up_once)
    lines = []
    _, history = runner.train_run(cfg, tmp_path / "run", log=lines.append)
    assert calls == [1, 2, 2, 3]
    fired = [line for line in lines if "Divergence guard" in line]
    assert len(fired) == 1 and "epoch 2: the loss became nan" in fired[0]
    assert "restored epoch 1" in fired[0]
    assert [m["lr_scale"] for m in history] == [1.0, 0.5, 0.5]
    assert Checkpoints(tmp_path / "run").epochs() == [1, 2, 3]


def test_guard_off_or_hopeless_ends_with_one_line(capsys, tiny_text, tmp_path):
    base = ["--text", str(tiny_text), "--maxlen", "10", "--hidden", "8", "--temperatures", ""]
    argv = [*base, "--learning-rate", "1e38", "--epochs", "1", "--checkpoint-dir"]
    assert cli.train_main([*argv, str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"still after {runner.MAX_CUTS} restarts" in err
    assert Checkpoints(tmp_path / "a").epochs() == []


def test_score_command(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    ck = str(tmp_path / "run")
    assert cli.score_main(["--checkpoint-dir", ck, "--json"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["mode"] == "window" and held["chars_scored"] == 92 - cfg.maxlen
    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox — jumps over the lazy dog, naïvely!! " * 3)
    assert cli.score_main([str(other), "--checkpoint-dir", ck, "--mode", "stateful"]) == 0
    out = capsys.readouterr()
    assert "bits/char" in out.out and "perplexity" in out.out
    assert "skipped" in out.err and "'—' x3" in out.err and "'ï' x3" in out.err
    assert cli.score_main(["--checkpoint-dir", ck, "--stride", "0"]) == 2
    assert "--stride must be >= 1" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("the fox")
    assert cli.score_main([str(short), "--checkpoint-dir", ck]) == 2
    assert "--mode stateful" in capsys.readouterr().err
    Path(cfg.text).write_text(Path(cfg.text).read_text() + "changed")
    assert cli.score_main(["--checkpoint-dir", ck]) == 2
    assert "is not the one the checkpoint" in capsys.readouterr().err


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
    old = {**Checkpoints(tmp_path / "run").meta(), "format": 1}
    with pytest.raises(CharjaxError, match="written by an older charjax"):
        checkpoint.config_of(old)


def test_sequence_model_samples_statefully_by_default(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg.replace(objective="sequence", step=10, epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    assert cli.sample_main(["--checkpoint-dir", str(tmp_path / "run"), "--length", "20"]) == 0
    assert "mode stateful" in capsys.readouterr().err


def test_lstm_recurrence_carry_gradient():
    """d(initial carry) of the fast recurrence equals autodiff's (used when carries chain)."""
    recurrent = jax.random.normal(jax.random.key(0), (4, 16)) * 0.3
    xz = jax.random.normal(jax.random.key(1), (5, 3, 16))
    carry = tuple(jax.random.normal(jax.random.key(2), (2, 3, 4)))

    def loss(carry, fast):
        if fast:
            final, hs = lstm.recurrence(recurrent, xz, carry)
        else:
            final, hs = lstm.layer({"recurrent_kernel": recurrent}, xz, carry, jnp.ones(5, bool))
        return jnp.sum(hs**2) + jnp.sum(final[1])

    fast = jax.grad(loss)(carry, True)
    plain = jax.grad(loss)(carry, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stream_plan_reads_contiguous_streams():
    starts = data.stream_starts(1000, 4, 10)  # streams of (1000 - 11) // 4 = 247 chars
    assert len(starts) == 24 * 4
    offsets = set()
    for epoch in (1, 2, 3, 4):
        plan, weights = data.stream_plan(
            jax.random.key(0), epoch, jnp.asarray(starts), 4, 5, maxlen=10, width=6
        )
        assert plan.shape == weights.shape == (5, 5, 6)
        w = np.asarray(weights).reshape(-1, 6)
        assert (w[:24, :4] == 1).all() and w[24:].sum() == 0 and w[:, 4:].sum() == 0
        rows = np.asarray(plan).reshape(-1, 6)[:24, :4]
        assert (np.diff(rows, axis=0) == 10).all()  # each stream goes on where it stopped
        offset = rows[0, 0]
        assert 0 <= offset < 10 and rows[0].tolist() == (offset + np.arange(4) * 247).tolist()
        assert rows.max() + 10 < 1000  # the last target is inside the text
        offsets.add(int(offset))
    assert len(offsets) > 1  # window boundaries move between epochs


def test_carried_state_goes_from_each_window_to_the_next(tiny_cfg):
    cfg = tiny_cfg.replace(
        objective="sequence", carry_state=True, step=10, batch_size=3, val_fraction=0.0
    )
    corpus = runner.load_corpus(cfg)
    ids = jnp.asarray(corpus.ids)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, cfg)
    assert jax.tree.map(jnp.shape, state.carry) == (((3, 16), (3, 16)),)
    first, second = jnp.array([0, 300, 600]), jnp.array([10, 310, 610])
    ones = jnp.ones(3)
    step = jax.jit(train.train_step, static_argnames="cfg")
    x1, y1 = train.gather(ids, first, cfg)
    after1, _ = step(state, x1, y1, ones, cfg)
    carry1, _ = model.forward(state.params, x1, all_steps=True)
    for a, b in zip(jax.tree.leaves(after1.carry), jax.tree.leaves(carry1), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    x2, y2 = train.gather(ids, second, cfg)
    _, loss2 = step(after1, x2, y2, ones, cfg)
    _, logits = model.forward(after1.params, x2, carry1, all_steps=True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y2).mean()
    np.testing.assert_allclose(loss2, expected, rtol=1e-5)
    zero_start = train.loss_sum(after1.params, x2, y2, ones, cfg) / (3 * cfg.maxlen)
    assert abs(float(zero_start) - float(loss2)) > 1e-4  # the carry made a difference
    with pytest.raises(CharjaxError, match="--carry-state reads the text as contiguous"):
        cfg.replace(step=5).check()


def test_stacked_models_sample_in_both_modes():
    from charjax import sample

    params = _params(vocab=9, hidden=8, layers=2, seed=9)
    prime = [1, 2, 3, 4, 5]
    _, logits = model.forward(params, jnp.asarray([prime]))
    for mode in ("window", "stateful"):
        out = sample.generate(params, prime, jax.random.key(0), 0.0, length=6, mode=mode, maxlen=5)
        assert out.shape == (6,) and int(out[0]) == int(jnp.argmax(logits[0]))
