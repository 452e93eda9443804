import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from charjax import data, runner, train
from charjax.checkpoint import Checkpoints
from charjax.config import Config
from charjax.errors import CharjaxError


def _setup(cfg):
    corpus = runner.load_corpus(cfg)
    ids = jnp.asarray(corpus.ids)
    starts = jnp.asarray(data.window_starts(len(corpus.ids), cfg.maxlen, cfg.step))
    return corpus, ids, starts


def _batch(ids, starts, cfg, n=None):
    n = n or cfg.batch_size
    inputs, targets = data.gather_windows(ids, starts[:n], cfg.maxlen)
    return inputs, targets, jnp.ones(n, jnp.float32)


def _equal_trees(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), a, b)))


def test_train_step_jit_equals_no_jit(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    batch = _batch(ids, starts, tiny_cfg)
    plain, loss = train.train_step(state, *batch, tiny_cfg)
    jitted, jloss = jax.jit(train.train_step, static_argnames="cfg")(state, *batch, tiny_cfg)
    np.testing.assert_allclose(loss, jloss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain, jitted)
    assert loss.shape == () and loss.dtype == jnp.float32


def test_one_step_changes_every_leaf_and_steps_lower_the_loss(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    batch = _batch(ids, starts, tiny_cfg)
    step = jax.jit(train.train_step, static_argnames="cfg")
    new, first_loss = step(state, *batch, tiny_cfg)
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), new.params, state.params)
    assert all(jax.tree.leaves(changed)), changed
    assert int(new.step) == 1
    for _ in range(10):
        new, loss = step(new, *batch, tiny_cfg)
    assert float(loss) < 0.8 * float(first_loss)


def test_padding_is_ignored_and_empty_batches_are_no_ops(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    inputs, targets, _ = _batch(ids, starts, tiny_cfg)
    weights = jnp.zeros(tiny_cfg.batch_size).at[:5].set(1.0)
    padded, loss_p = train.train_step(state, inputs, targets, weights, tiny_cfg)
    short, loss_s = train.train_step(state, inputs[:5], targets[:5], weights[:5], tiny_cfg)
    np.testing.assert_allclose(loss_p, loss_s, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), padded, short)
    same, _ = train.train_step(state, inputs, targets, jnp.zeros_like(weights), tiny_cfg)
    assert _equal_trees(same, state)


def test_same_seed_gives_bit_identical_params(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    data_key = runner.run_keys(0)[1]
    runs = []
    for _ in range(2):
        state = train.init_state(runner.run_keys(0)[0], corpus.vocab.size, tiny_cfg)
        for epoch in (1, 2):
            state, loss = train.train_epoch(state, ids, starts, data_key, epoch, tiny_cfg)
        runs.append((state, loss))
    assert _equal_trees(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    other = train.init_state(runner.run_keys(1)[0], corpus.vocab.size, tiny_cfg)
    assert not _equal_trees(other.params, runs[0][0].params)


def test_epoch_takes_every_batch_including_the_last_partial_one(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = train.init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    state, loss = train.train_epoch(state, ids, starts, jax.random.key(1), 1, tiny_cfg)
    assert int(state.step) == -(-len(starts) // tiny_cfg.batch_size)
    assert np.isfinite(loss) and loss > 0


def test_chunk_size_does_not_change_the_numbers(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    results = []
    for k in (1, 4, 7):
        cfg = dataclasses.replace(tiny_cfg, steps_per_call=k)
        state = train.init_state(jax.random.key(0), corpus.vocab.size, cfg)
        state, loss = train.train_epoch(state, ids, starts, jax.random.key(1), 1, cfg)
        results.append((state.params, loss))
    for params, loss in results[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, results[0][0]
        )
        assert loss == pytest.approx(results[0][1], rel=1e-6)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_cfg, tmp_path):
    quiet = lambda *a: None  # noqa: E731
    cfg = dataclasses.replace(tiny_cfg, epochs=3)
    whole, _ = runner.train_run(cfg, tmp_path / "whole", log=quiet)
    runner.train_run(dataclasses.replace(cfg, epochs=1), tmp_path / "split", log=quiet)
    resumed, history = runner.train_run(
        cfg, tmp_path / "split", resume=True, given={"epochs": 3}, log=quiet
    )
    assert [m["epoch"] for m in history] == [2, 3]
    assert _equal_trees(whole, resumed)
    assert Checkpoints(tmp_path / "split").epochs() == [1, 2, 3]


def test_checkpoint_holds_what_sampling_and_resuming_need(tiny_cfg, tmp_path):
    state, history = runner.train_run(tiny_cfg, tmp_path, log=lambda *a: None)
    ckpts = Checkpoints(tmp_path, create=False)
    meta = ckpts.meta()
    assert meta["epoch"] == 2 and Config.from_dict(meta["config"]) == tiny_cfg
    assert meta["vocab"] == data.Vocab.from_text(data.read_text(tiny_cfg.text)).chars
    assert len(meta["prime"]) == tiny_cfg.maxlen and len(meta["corpus_sha256"]) == 64
    assert set(meta["metrics"]) >= {"epoch", "loss", "seconds", "windows_per_s", "samples"}
    assert set(meta["metrics"]["samples"]["texts"]) == {"0.5", "1"}
    assert all(len(t) == 20 for t in meta["metrics"]["samples"]["texts"].values())
    like = jax.eval_shape(lambda: state)
    assert _equal_trees(ckpts.restore(like), state)
    assert _equal_trees(ckpts.restore(like, 1).params, ckpts.restore(like, 1).params)
    with pytest.raises(CharjaxError, match="available: 1, 2"):
        ckpts.meta(7)


def test_keep_prunes_old_checkpoints(tiny_cfg, tmp_path):
    cfg = dataclasses.replace(tiny_cfg, epochs=3, keep=2, temperatures=())
    runner.train_run(cfg, tmp_path, log=lambda *a: None)
    assert Checkpoints(tmp_path).epochs() == [2, 3]


def test_resume_refuses_conflicts_and_fresh_runs_refuse_full_dirs(tiny_cfg, tmp_path):
    quiet = lambda *a: None  # noqa: E731
    runner.train_run(dataclasses.replace(tiny_cfg, epochs=1), tmp_path, log=quiet)
    with pytest.raises(CharjaxError, match="--resume"):
        runner.train_run(tiny_cfg, tmp_path, log=quiet)
    with pytest.raises(CharjaxError, match="--hidden 32"):
        runner.train_run(tiny_cfg, tmp_path, resume=True, given={"hidden": 32}, log=quiet)
    with pytest.raises(CharjaxError, match="nothing to resume"):
        runner.train_run(tiny_cfg, tmp_path / "empty", resume=True, log=quiet)


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"maxlen": 0}, "--maxlen"),
        ({"step": -1}, "--step"),
        ({"epochs": -1}, "--epochs"),
        ({"learning_rate": float("nan")}, "--learning-rate"),
    ],
)
def test_nonsense_config_is_refused(change, flag):
    with pytest.raises(CharjaxError, match=flag):
        Config(**change).check()
