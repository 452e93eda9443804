"""One epoch as an iterator: determinism, every batch, chunk size, stopping and continuing
from a position, and the running metrics."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from util import same_trees

from charjax import corpus as corpora
from charjax import objective
from charjax.epoch import Position, iterate, train_epoch
from charjax.run import run_keys
from charjax.step import init_state


def _setup(cfg):
    """(corpus, its ids, the split: the whole text, as if --val-fraction 0)."""
    corpus = corpora.load(cfg)
    return corpus, corpus.ids, len(corpus.ids)


def _windows(cfg, split):
    return objective.of(cfg).windows(split)


def test_same_seed_gives_bit_identical_params(tiny_cfg):
    corpus, ids, split = _setup(tiny_cfg)
    data_key = run_keys(0)[1]
    runs = []
    for _ in range(2):
        state = init_state(run_keys(0)[0], corpus.vocab.size, tiny_cfg)
        for epoch in (1, 2):
            state, loss = train_epoch(state, ids, split, data_key, epoch, tiny_cfg)
        runs.append((state, loss))
    assert same_trees(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    other = init_state(run_keys(1)[0], corpus.vocab.size, tiny_cfg)
    assert not same_trees(other.params, runs[0][0].params)


def test_epoch_takes_every_batch_including_the_last_partial_one(tiny_cfg):
    corpus, ids, split = _setup(tiny_cfg)
    state = init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    state, loss = train_epoch(state, ids, split, jax.random.key(1), 1, tiny_cfg)
    assert int(state.step) == -(-_windows(tiny_cfg, split) // tiny_cfg.batch_size)
    assert np.isfinite(loss) and loss > 0


@pytest.mark.slow
def test_chunk_size_does_not_change_the_numbers(tiny_cfg):
    corpus, ids, split = _setup(tiny_cfg)
    results = []
    for k in (1, 4, 7):
        cfg = dataclasses.replace(tiny_cfg, steps_per_call=k)
        state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
        state, loss = train_epoch(state, ids, split, jax.random.key(1), 1, cfg)
        results.append((state.params, loss))
    for params, loss in results[1:]:
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, results[0][0]
        )
        assert loss == pytest.approx(results[0][1], rel=1e-6)


def test_iterate_yields_each_chunk_and_continues_from_any_position(tiny_cfg):
    """Stopped after chunk k, an epoch continued from the yielded position ends bit-identical
    to the whole epoch, with the same running metrics."""
    corpus, ids, split = _setup(tiny_cfg)
    fresh = lambda: init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)  # noqa: E731
    key = jax.random.key(1)
    steps = list(iterate(fresh(), ids, split, key, 1, tiny_cfg))
    chunks = steps[-1].chunks
    assert [p.position.chunks for p in steps] == list(range(1, chunks + 1)) and chunks > 2
    assert [p.finished for p in steps] == [False] * (chunks - 1) + [True]
    assert steps[-1].position.windows == _windows(tiny_cfg, split)
    assert steps[-1].batches == -(-_windows(tiny_cfg, split) // tiny_cfg.batch_size)
    windows = [p.position.windows for p in steps]
    assert windows == sorted(windows) and windows[0] == tiny_cfg.steps_per_call * 32
    whole = jax.tree.map(np.asarray, steps[-1].state)
    for k in (1, chunks - 1):
        for first in iterate(fresh(), ids, split, key, 1, tiny_cfg):
            if first.position.chunks == k:  # stop here: the next chunk would donate the state
                break
        state = jax.tree.map(np.array, first.state)
        rest = list(iterate(state, ids, split, key, 1, tiny_cfg, start=first.position))
        assert rest[0].position.chunks == k + 1
        assert same_trees(rest[-1].state, whole)
        assert rest[-1].position == steps[-1].position


def test_position_averages_every_metric_by_windows_and_saves_as_format_2():
    pos = Position().advance({"loss": [2.0, 4.0]}, np.array([10, 30]))
    pos = pos.advance({"loss": [1.0, 0.0]}, np.array([20, 0]))  # a padding batch counts nothing
    assert (pos.chunks, pos.windows) == (2, 60)
    assert pos.means() == {"loss": pytest.approx((20 + 120 + 20) / 60)}
    assert pos.to_json() == [2, 160.0, 60]  # the layout checkpoints have always had
    assert Position.from_json([2, 160.0, 60]) == pos
    two = Position().advance({"loss": [1.0], "grad_norm": [3.0]}, np.array([4]))
    assert two.means() == {"loss": 1.0, "grad_norm": 3.0}
    assert Position.from_json(two.to_json()) == two
    assert two.finite and not Position(1, 4, {"loss": math.nan}).finite


def test_a_non_finite_chunk_ends_the_epoch(tiny_cfg):
    corpus, ids, split = _setup(tiny_cfg)
    cfg = tiny_cfg.replace(learning_rate=1e38)
    state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
    steps = list(iterate(state, ids, split, jax.random.key(1), 1, cfg))
    assert steps[-1].finished and not steps[-1].position.finite
    assert steps[-1].position.chunks < steps[-1].chunks
    _, loss = train_epoch(
        init_state(jax.random.key(0), corpus.vocab.size, cfg),
        ids,
        split,
        jax.random.key(1),
        1,
        cfg,
    )
    assert not np.isfinite(loss)
