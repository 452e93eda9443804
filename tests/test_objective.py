"""The objective decides, in one place, how a run cuts, gathers, counts and reads the text."""

import jax
import numpy as np
import optax

from charjax import batching, objective
from charjax.config import Config


def test_the_original_objective():
    goal = objective.of(Config())
    assert (goal.every_position, goal.carried) == (False, False)
    assert goal.chars_per_window == 1 and goal.reading == "window"
    assert goal.validation_chars == 61 and goal.validation_stride == 3
    assert goal.windows(100) == len(batching.window_starts(100, 60, 3))
    ids = (np.arange(200) % 7).astype(np.uint8)
    inputs, targets = goal.batch(ids, np.array([0, 9]))
    assert inputs.shape == (2, 60) and targets.tolist() == [int(ids[60]), int(ids[69])]


def test_sequences_and_carried_streams():
    cfg = Config(objective="sequence", maxlen=10, step=10, batch_size=4)
    goal = objective.of(cfg)
    assert goal.chars_per_window == 10 and goal.reading == "stateful"
    assert goal.validation_chars == 2 and goal.validation_stride == 1
    assert goal.windows(1000) == len(batching.window_starts(1000, 10, 10))
    inputs, targets = goal.batch(np.arange(50), np.array([3]))
    assert inputs.tolist() == [list(range(3, 13))] and targets.tolist() == [list(range(4, 14))]
    streams = objective.of(cfg.replace(carry_state=True))
    assert streams.carried and streams.reading == "stateful"
    assert streams.windows(1000) == len(batching.stream_starts(1000, 4, 10))


def test_window_losses_sum_each_windows_predicted_chars():
    logits = jax.random.normal(jax.random.key(0), (3, 5, 7))
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 7)
    every = objective.of(Config(objective="sequence", maxlen=5, step=5))
    per_char = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(
        every.window_losses(logits, targets), per_char.sum(-1), rtol=1e-6, atol=1e-6
    )
    last = objective.of(Config(maxlen=5))
    np.testing.assert_allclose(
        last.window_losses(logits[:, -1], targets[:, -1]), per_char[:, -1], rtol=1e-6
    )


def test_plans_cover_every_training_window():
    for cfg in (
        Config(batch_size=5, maxlen=4, step=2),
        Config(objective="sequence", carry_state=True, batch_size=5, maxlen=4, step=4),
    ):
        goal = objective.of(cfg)
        plan = goal.plan(jax.random.key(0), 1, 400, 3, 6)
        chunks = [plan.chunk(c) for c in range(plan.chunks)]
        assert all(s.shape == w.shape == (3, 6) for s, w in chunks)
        assert sum(int(w.sum()) for _, w in chunks) == goal.windows(400) == plan.windows
