"""The train step: jit equals no jit, it learns, padding and empty batches, the sequence loss,
dropout keys, carried streams, bfloat16 matmuls; its metrics dict; three steps of each recipe
pinned to recorded parameters."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from util import forward, loss_of, same_trees

from charjax import batching, epoch, objective
from charjax import corpus as corpora
from charjax.errors import CharjaxError
from charjax.step import StepContext, init_state, loss_sum, train_step

STEP = jax.jit(train_step, static_argnames="cfg")  # one compiled step per config and shapes


def _setup(cfg):
    corpus = corpora.load(cfg)
    starts = batching.window_starts(len(corpus.ids), cfg.maxlen, cfg.step)
    return corpus, corpus.ids, starts


def _batch(ids, starts, cfg, n=None):
    n = n or cfg.batch_size
    inputs, targets = objective.of(cfg).batch(ids, starts[:n])
    return inputs, targets, jnp.ones(n, jnp.float32)


@pytest.mark.slow  # op by op, a training step compiles each of its ops: ~15 s on 2 cores
def test_train_step_jit_equals_no_jit(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    batch = _batch(ids, starts, tiny_cfg)
    plain, metrics = train_step(state, *batch, tiny_cfg)
    assert set(metrics) == {"loss"}  # the step's metrics: what the epoch averages and shows
    loss = metrics["loss"]
    jitted, jloss = loss_of(STEP(state, *batch, tiny_cfg))
    np.testing.assert_allclose(loss, jloss, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain, jitted)
    assert loss.shape == () and loss.dtype == jnp.float32


def test_one_step_changes_every_leaf_and_steps_lower_the_loss(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    batch = _batch(ids, starts, tiny_cfg)
    new, first_loss = loss_of(STEP(state, *batch, tiny_cfg))
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), new.params, state.params)
    assert all(jax.tree.leaves(changed)), changed
    assert int(new.step) == 1
    for _ in range(10):
        new, loss = loss_of(STEP(new, *batch, tiny_cfg))
    assert float(loss) < 0.8 * float(first_loss)


def test_padding_is_ignored_and_empty_batches_are_no_ops(tiny_cfg):
    corpus, ids, starts = _setup(tiny_cfg)
    state = init_state(jax.random.key(0), corpus.vocab.size, tiny_cfg)
    inputs, targets, _ = _batch(ids, starts, tiny_cfg)
    weights = jnp.zeros(tiny_cfg.batch_size).at[:5].set(1.0)
    padded, loss_p = loss_of(STEP(state, inputs, targets, weights, tiny_cfg))
    short, loss_s = loss_of(STEP(state, inputs[:5], targets[:5], weights[:5], tiny_cfg))
    np.testing.assert_allclose(loss_p, loss_s, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), padded, short)
    same, _ = loss_of(STEP(state, inputs, targets, jnp.zeros_like(weights), tiny_cfg))
    assert same_trees(same, state)


def test_sequence_loss_counts_every_predicted_char(tiny_cfg):
    cfg = tiny_cfg.replace(objective="sequence", val_fraction=0.0)
    corpus = corpora.load(cfg)
    params = init_state(jax.random.key(0), corpus.vocab.size, cfg).params
    ids = corpus.ids
    starts = np.array([0, 7, 20])
    inputs, targets = objective.of(cfg).batch(ids, starts)
    assert inputs.shape == targets.shape == (3, cfg.maxlen)
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    np.testing.assert_array_equal(targets[:, -1], ids[starts + cfg.maxlen])
    weights = jnp.array([1.0, 1.0, 0.0])
    total = loss_sum(params, inputs, targets, weights, cfg)
    _, logits = forward(params, inputs, all_steps=True)
    per_char = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(total, per_char[:2].sum(), rtol=1e-5, atol=1e-5)


def _first_windows(cfg):
    """(initial state, its 8 first windows as one batch (inputs, targets, weights)), and a step
    context with a dropout key."""
    corpus = corpora.load(cfg)
    inputs, targets = objective.of(cfg).batch(corpus.ids, np.arange(8))
    state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
    batch = (inputs, targets, jnp.ones(8))
    return state, batch, StepContext(jax.random.key(5), 100)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_dropout_steps_are_deterministic_per_step_and_differ_from_no_dropout(tiny_cfg):
    cfg = tiny_cfg.replace(dropout=0.3, layers=2)
    state, (inputs, targets, weights), context = _first_windows(cfg)
    a, loss_a = loss_of(STEP(state, inputs, targets, weights, cfg, None, context))
    b, loss_b = loss_of(STEP(state, inputs, targets, weights, cfg, None, context))
    c, loss_c = loss_of(
        STEP(state, inputs, targets, weights, cfg.replace(dropout=0.0), None, context)
    )
    assert float(loss_a) == float(loss_b) and float(loss_a) != float(loss_c)
    assert jnp.array_equal(a.params["dense"]["kernel"], b.params["dense"]["kernel"])


def test_carried_state_goes_from_each_window_to_the_next(tiny_cfg):
    cfg = tiny_cfg.replace(
        objective="sequence", carry_state=True, step=10, batch_size=3, val_fraction=0.0
    )
    corpus = corpora.load(cfg)
    ids = corpus.ids
    state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
    assert jax.tree.map(jnp.shape, state.carry) == (((3, 16), (3, 16)),)
    first, second = np.array([0, 300, 600]), np.array([10, 310, 610])
    ones = jnp.ones(3)
    x1, y1 = objective.of(cfg).batch(ids, first)
    after1, _ = loss_of(STEP(state, x1, y1, ones, cfg))
    carry1, _ = forward(state.params, x1, all_steps=True)
    for a, b in zip(jax.tree.leaves(after1.carry), jax.tree.leaves(carry1), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    x2, y2 = objective.of(cfg).batch(ids, second)
    _, loss2 = loss_of(STEP(after1, x2, y2, ones, cfg))
    _, logits = forward(after1.params, x2, carry1, all_steps=True)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y2).mean()
    np.testing.assert_allclose(loss2, expected, rtol=1e-5, atol=1e-6)
    zero_start = loss_sum(after1.params, x2, y2, ones, cfg) / (3 * cfg.maxlen)
    assert abs(float(zero_start) - float(loss2)) > 1e-4  # the carry made a difference
    with pytest.raises(CharjaxError, match="--carry-state reads the text as contiguous"):
        cfg.replace(step=5).check()


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_a_varied_window_is_the_window_of_its_length_with_a_step_scaled_by_it(tiny_cfg):
    """--vary-length: a batch of windows `length` long, padded to the longest, trains as the
    same windows unpadded (loss, carry, gradient direction), the step scaled by
    length / maxlen (rmsprop's first step is sign-like, so the update shows the factor)."""
    streams = tiny_cfg.replace(objective="sequence", carry_state=True, step=10, batch_size=3,
                               val_fraction=0.0)  # fmt: skip
    varied = streams.replace(vary_length=3)
    corpus = corpora.load(varied)
    state = init_state(jax.random.key(0), corpus.vocab.size, varied)
    starts, ones, length = np.array([0, 300, 600]), jnp.ones(3), 7
    x, y = objective.of(varied).batch(corpus.ids, starts)
    assert x.shape == y.shape == (3, 16)  # maxlen + 2 * 3: the longest window
    padded, loss_v = loss_of(STEP(state, x, y, ones, varied, length=jnp.int32(length)))
    exact = streams.replace(maxlen=length, step=length)
    short, loss_s = loss_of(STEP(state, x[:, :length], y[:, :length], ones, exact))
    np.testing.assert_allclose(loss_v, loss_s, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(padded.carry), jax.tree.leaves(short.carry), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    moved = lambda s: jax.tree.map(lambda p, q: p - q, s.params, state.params)  # noqa: E731
    for a, b in zip(jax.tree.leaves(moved(padded)), jax.tree.leaves(moved(short)), strict=True):
        np.testing.assert_allclose(a, b * length / varied.maxlen, rtol=1e-4, atol=1e-7)


def test_bfloat16_matmuls_keep_float32_parameters(tiny_cfg):
    corpus = corpora.load(tiny_cfg)
    starts = batching.window_starts(len(corpus.ids), tiny_cfg.maxlen, tiny_cfg.step)
    inputs, targets = objective.of(tiny_cfg).batch(corpus.ids, starts[:32])
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_cfg.replace(dtype=dtype)
        state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
        for _ in range(5):
            state, loss = loss_of(STEP(state, inputs, targets, jnp.ones(32), cfg))
        results[dtype] = (state, float(loss))
    bf16_state, bf16_loss = results["bfloat16"]
    leaves = jax.tree.leaves((bf16_state.params, bf16_state.opt_state))
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
    assert bf16_loss != results["float32"][1]  # the matmuls really ran in bfloat16
    assert bf16_loss == pytest.approx(results["float32"][1], abs=0.05)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_ema_follows_the_parameters_and_weight_drop_is_keyed_per_step(tiny_cfg):
    from charjax.step import eval_params

    cfg = tiny_cfg.replace(ema=0.75, weight_drop=0.4)
    state, (inputs, targets, weights), context = _first_windows(cfg)
    assert same_trees(state.ema, state.params) and eval_params(state) is state.ema
    new, _ = STEP(state, inputs, targets, weights, cfg, None, context)
    expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, state.ema, new.params)
    for a, b in zip(jax.tree.leaves(new.ema), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert not same_trees(new.ema, new.params)
    again, _ = STEP(state, inputs, targets, weights, cfg, None, context)
    assert same_trees(again, new)  # the same step, the same masks
    no_drop, _ = STEP(state, inputs, targets, weights, cfg.replace(weight_drop=0.0), None, context)
    assert not same_trees(no_drop.params, new.params)
    assert _first_windows(tiny_cfg)[0].ema == ()


# Three steps of each recipe through the jitted, mesh-split chunk, pinned to the parameters the
# code gave when recorded (2-core AMD EPYC with AVX-512, jax 0.10.2, 2026-12-06, the fast scan of
# every LSTM-shaped cell; the scans before it gave parameters at most 1.2e-7 apart on that host:
# float32 rounding of the backward's reordered sums): a change in how a step draws its masks or
# cuts its windows shows here as a different hash. (sha256 of the params' float32 bytes, sum of
# |params|.) Other platforms (a GPU, a CPU without AVX-512, another jax) may round differently:
# there the sum is compared, closely enough to catch another mask.
_RECORDED_ON = ("cpu", "0.10.2", True)  # backend, jax version, AVX-512
_RECIPES = {
    "plain": (
        dict(),
        ("382150bbced2a3dacf810c73aa4d6096d6d733c8caac7661bbcd4dd40ae13756", 459.4850742015915),
    ),
    "dropout": (
        dict(dropout=0.3, layers=2),
        ("25f966360c03d2ef8c959b3b3286b4c2e0bdb66400c6278aaaf081819e3fffd3", 724.8636487211279),
    ),
    "locked dropout": (
        dict(dropout=0.3, locked_dropout=True, layers=2),
        ("31beb12781f575584402e5fd8bb6a727556edfaf04a9ecc498e16deafeb21eb6", 726.4662107552467),
    ),
    "weight-drop": (
        dict(weight_drop=0.4, layers=2),
        ("e8bad48e81d6f7ccf301f0cfcd09e7667f9642be188f9f6b4b3673e5ddb73cb5", 728.3668339295218),
    ),
    "recurrent dropout": (
        dict(recurrent_dropout=0.3, layers=2),
        ("cbcd0ba3ed43b265f5ca84fc680f6b004cd7699182890d785a907e56ab95149c", 729.9216961044622),
    ),
    "vary-length": (
        dict(objective="sequence", carry_state=True, step=10, batch_size=4, vary_length=3),
        ("96a7ff6ad5de4d41afdd2642611f4e82dc7367e9c2b0e7a6a81d1fccb15afa8d", 453.28406126085974),
    ),
    "all at once": (
        dict(
            objective="sequence",
            carry_state=True,
            step=10,
            batch_size=4,
            vary_length=3,
            dropout=0.3,
            locked_dropout=True,
            weight_drop=0.4,
            recurrent_dropout=0.3,
            layers=2,
        ),
        ("9650d0eff465279e46a42b4c40106952529de30eb93bd89288980d5110531d92", 722.0474030635451),
    ),
}


def _three_steps(cfg):
    """The parameters after the first chunk of three steps of epoch 1 (one key for all)."""
    corpus = corpora.load(cfg)
    split = corpora.split(corpus, cfg)
    state = init_state(jax.random.key(0), corpus.vocab.size, cfg)
    context = StepContext(jax.random.key(5), jnp.int32(100))
    chunks = epoch.iterate(state, corpus.ids, split, jax.random.key(1), 1, cfg, context=context)
    done = next(chunks)
    assert int(done.state.step) == 3
    return done.state.params


FAST_RECIPES = ("plain", "all at once")  # in the fast tier; the others run with --all


@pytest.mark.parametrize(
    "recipe",
    [r if r in FAST_RECIPES else pytest.param(r, marks=pytest.mark.slow) for r in _RECIPES],
)
def test_three_steps_of_each_recipe_give_the_recorded_parameters(tiny_cfg, recipe):
    changes, (digest, total) = _RECIPES[recipe]
    params = _three_steps(tiny_cfg.replace(steps_per_call=3, **changes))
    leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(params)]
    got_total = float(sum(np.abs(x).astype(np.float64).sum() for x in leaves))
    got_digest = hashlib.sha256(b"".join(x.tobytes() for x in leaves)).hexdigest()
    assert got_total == pytest.approx(total, rel=1e-4)
    if _platform() == _RECORDED_ON:
        assert got_digest == digest


def _platform() -> tuple:
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = " avx512f" in f.read()
    except OSError:
        avx512 = None
    return jax.default_backend(), jax.__version__, avx512
