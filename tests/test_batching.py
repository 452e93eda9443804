"""Window counts and starts, the keyed shuffle, epoch plans computed chunk by chunk (shuffled
windows, contiguous streams, padding to the device width) and windows sliced on the host."""

import jax
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
    assert batching.window_count(n, maxlen, step) == len(starts)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=2, max_size=300), st.integers(1, 20), st.integers(1, 7))
def test_windows_slice_the_text(text, maxlen, step):
    vocab = corpora.Vocab.from_text(text)
    ids = vocab.encode(text)
    starts = batching.window_starts(len(text), maxlen, step)
    if len(starts) == 0:
        assert len(text) <= maxlen
        return
    block = batching.slices(ids, starts, maxlen + 1)
    assert block.shape == (len(starts), maxlen + 1) and block.dtype == ids.dtype
    for row, s in zip(block, starts, strict=True):
        assert vocab.decode(row) == text[s : s + maxlen + 1]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 2**31))
def test_shuffle_is_a_permutation(n, seed):
    keys = np.random.default_rng(seed).integers(0, 2**32, batching.ROUNDS, dtype=np.uint32)
    order = batching.shuffle(np.arange(n), n, keys)
    assert sorted(order.tolist()) == list(range(n))


def test_shuffle_is_keyed_and_computed_position_by_position():
    n = 1_000_003
    keys = batching.shuffle_keys(jax.random.key(0), 1)
    whole = batching.shuffle(np.arange(n), n, keys)
    assert np.array_equal(np.sort(whole), np.arange(n))
    some = np.array([0, 17, 999_999, n - 1])
    assert batching.shuffle(some, n, keys).tolist() == whole[some].tolist()
    other = batching.shuffle(np.arange(n), n, batching.shuffle_keys(jax.random.key(0), 2))
    assert (other != whole).mean() > 0.99
    # not a near-identity: consecutive positions land far apart
    assert np.median(np.abs(np.diff(whole[:1000]))) > n / 10


def _whole(plan):
    chunks = [plan.chunk(c) for c in range(plan.chunks)]
    return np.stack([s for s, _ in chunks]), np.stack([w for _, w in chunks])


def test_window_plan_uses_every_window_once():
    key = jax.random.key(0)
    shape = dict(batch_size=8, steps_per_call=3, width=8)
    plan = batching.window_plan(key, 1, 100, 3, **shape)  # 100 windows at stride 3
    starts, weights = _whole(plan)
    assert starts.shape == (5, 3, 8) and weights.dtype == np.float32
    assert sorted(starts[weights > 0].tolist()) == list(range(0, 300, 3))
    assert weights.sum() == 100
    assert [plan.counts(c).tolist() for c in range(5)] == weights.sum(-1).tolist()
    again, _ = _whole(batching.window_plan(key, 1, 100, 3, **shape))
    other, _ = _whole(batching.window_plan(key, 2, 100, 3, **shape))
    assert (again == starts).all() and (other != starts).any()


def test_plan_pads_batches_to_the_device_width():
    shape = dict(batch_size=6, steps_per_call=4, width=8)
    plan = batching.window_plan(jax.random.key(0), 1, 50, 1, **shape)
    starts, w = _whole(plan)
    assert starts.shape == (3, 4, 8) and plan.batches == 9
    assert (w[..., 6:] == 0).all()  # the padding columns never count
    assert w.sum(axis=-1).tolist() == [[6, 6, 6, 6], [6, 6, 6, 6], [2, 0, 0, 0]]
    assert sorted(starts[w > 0].tolist()) == list(range(50))


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
    assert batching.stream_layout(1000, 4, 10) == (247, 24)  # (1000 - 11) // 4 chars a stream
    assert len(batching.stream_starts(1000, 4, 10)) == 24 * 4
    offsets = set()
    for epoch in (1, 2, 3, 4):
        plan = batching.stream_plan(
            jax.random.key(0), epoch, 1000, 10, batch_size=4, steps_per_call=5, width=6
        )
        starts, weights = _whole(plan)
        assert starts.shape == weights.shape == (5, 5, 6)
        w = weights.reshape(-1, 6)
        assert (w[:24, :4] == 1).all() and w[24:].sum() == 0 and w[:, 4:].sum() == 0
        rows = starts.reshape(-1, 6)[:24, :4]
        assert (np.diff(rows, axis=0) == 10).all()  # each stream goes on where it stopped
        offset = rows[0, 0]
        assert 0 <= offset < 10 and rows[0].tolist() == (offset + np.arange(4) * 247).tolist()
        assert rows.max() + 10 < 1000  # the last target is inside the text
        offsets.add(int(offset))
    assert len(offsets) > 1  # window boundaries move between epochs


def test_varied_lengths_move_every_boundary_and_cover_the_streams_in_the_same_steps():
    n, streams, maxlen, shift = 2000, 4, 10, 3
    length, steps = batching.stream_layout(n, streams, maxlen, shift)
    assert (length, steps) == ((2000 - 1 - 10 - 9) // 4, 49)
    assert batching.stream_layout(n, streams, maxlen) == ((2000 - 11) // 4, 49)  # same steps
    shape = dict(batch_size=streams, steps_per_call=5, width=streams)
    seen = []
    for epoch in (1, 2):
        plan = batching.stream_plan(jax.random.key(0), epoch, n, maxlen, shift=shift, **shape)
        starts, _ = _whole(plan)
        rows = starts.reshape(-1, streams)[:steps]
        sizes = np.concatenate([plan.lengths(c) for c in range(plan.chunks)])[:steps]
        assert sizes.dtype == np.int32 and plan.windows == steps * streams
        assert sizes.min() >= maxlen - 2 * shift and sizes.max() <= maxlen + 2 * shift
        assert len(set(sizes.tolist())) > 3  # they do vary
        np.testing.assert_array_equal(np.diff(rows, axis=0), sizes[:-1, None] * np.ones(streams))
        assert abs(int(rows[-1, 0] + sizes[-1] - rows[0, 0]) - steps * maxlen) <= shift
        assert rows.max() + maxlen + 2 * shift < n  # the longest window's targets: inside
        again = batching.stream_plan(jax.random.key(0), epoch, n, maxlen, shift=shift, **shape)
        np.testing.assert_array_equal(_whole(again)[0], starts)  # a function of (key, epoch)
        seen.append(sizes)
    assert not np.array_equal(*seen)  # other cuts each epoch
    fixed = batching.stream_plan(jax.random.key(0), 1, n, maxlen, **shape)
    assert fixed.lengths(0) is None
