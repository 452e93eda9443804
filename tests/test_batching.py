"""Window starts, windows sliced on device, and epoch plans (shuffled windows, contiguous
streams, padding to the device width)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charjax import batching
from charjax import corpus as corpora


@pytest.mark.parametrize(
    "n,maxlen,step",
    [(600901, 60, 3), (100, 10, 3), (61, 60, 1), (60, 60, 3), (11, 10, 7), (1000, 1, 1)],
)
def test_window_count_formula(n, maxlen, step):
    starts = batching.window_starts(n, maxlen, step)
    assert starts.dtype == np.int32
    assert starts.tolist() == list(range(0, n - maxlen, step))


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=2, max_size=300), st.integers(1, 20), st.integers(1, 7))
def test_windows_slice_the_text(text, maxlen, step):
    vocab = corpora.Vocab.from_text(text)
    ids = vocab.encode(text)
    starts = batching.window_starts(len(text), maxlen, step)
    if len(starts) == 0:
        assert len(text) <= maxlen
        return
    inputs, targets = batching.gather_windows(jnp.asarray(ids), jnp.asarray(starts), maxlen)
    assert inputs.shape == (len(starts), maxlen) and targets.shape == (len(starts),)
    for row, target, s in zip(np.asarray(inputs), np.asarray(targets), starts, strict=False):
        assert vocab.decode(row) == text[s : s + maxlen]
        assert vocab.decode([target]) == text[s + maxlen]


def test_epoch_plan_uses_every_window_once():
    starts = jnp.arange(0, 300, 3, dtype=jnp.int32)  # 100 windows
    key = jax.random.key(0)
    plan, weights = batching.epoch_plan(key, 1, starts, batch_size=8, steps_per_call=3)
    assert plan.shape == (5, 3, 8) and plan.dtype == jnp.int32 and weights.dtype == jnp.float32
    real = np.asarray(plan)[np.asarray(weights) > 0]
    assert sorted(real.tolist()) == np.asarray(starts).tolist()
    assert float(weights.sum()) == 100
    again, _ = batching.epoch_plan(key, 1, starts, batch_size=8, steps_per_call=3)
    other, _ = batching.epoch_plan(key, 2, starts, batch_size=8, steps_per_call=3)
    assert (np.asarray(again) == np.asarray(plan)).all()
    assert (np.asarray(other) != np.asarray(plan)).any()


def test_plan_pads_batches_to_the_device_width():
    starts = jnp.arange(50, dtype=jnp.int32)
    plan, weights = batching.epoch_plan(
        jax.random.key(0), 1, starts, batch_size=6, steps_per_call=4, width=8
    )
    assert plan.shape == (3, 4, 8)
    w = np.asarray(weights)
    assert (w[..., 6:] == 0).all()  # the padding columns never count
    assert w.sum(axis=-1).tolist() == [[6, 6, 6, 6], [6, 6, 6, 6], [2, 0, 0, 0]]
    real = np.asarray(plan)[w > 0]
    assert sorted(real.tolist()) == list(range(50))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(20, 5000),
    fraction=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
    maxlen=st.integers(1, 15),
    step=st.integers(1, 7),
)
def test_no_training_window_reaches_the_held_out_tail(n, fraction, maxlen, step):
    split = corpora.split_point(n, fraction)
    assert split == (n if fraction == 0 else int(n * (1 - fraction)))
    starts = batching.window_starts(split, maxlen, step)
    if len(starts):
        assert starts.max() + maxlen < split  # the last target (of either objective) is inside


def test_stream_plan_reads_contiguous_streams():
    starts = batching.stream_starts(1000, 4, 10)  # streams of (1000 - 11) // 4 = 247 chars
    assert len(starts) == 24 * 4
    offsets = set()
    for epoch in (1, 2, 3, 4):
        plan, weights = batching.stream_plan(
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
