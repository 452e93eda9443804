"""The Flax model: Keras' layout, initialisers and parameter count, the forward pass (masks,
carries, every position), stacked layers, dropout, and the state each layer starts from."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util
from util import init_params, spec_of
from util import jit_forward as forward

from charjax import cells, model
from charjax.draws import Draws, apply_dropout

# Where two scans compute one value (the inference scan and the training scan, or batches of
# other sizes), XLA may fuse their float32 operations differently by CPU kind (measured: 1.9e-9
# apart at a logit of 9.6e-4). A logit sums H products of ~1e-2 each, rounded at ~6e-8 of
# their size: rtol 1e-5 for values of any size, atol 1e-7 for those near zero.
RTOL, ATOL = 1e-5, 1e-7


def test_parameter_shapes_and_count():
    params = init_params(jax.random.key(0), 59, 128)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    assert shapes == {
        "lstm": {
            "kernel": ((59, 512), jnp.float32),
            "recurrent_kernel": ((128, 512), jnp.float32),
            "bias": ((512,), jnp.float32),
        },
        "dense": {"kernel": ((128, 59), jnp.float32), "bias": ((59,), jnp.float32)},
    }
    assert model.num_params(params) == 4 * 128 * (59 + 128 + 1) + 128 * 59 + 59 == 103_867
    assert spec_of(params) == model.Spec(59, 128)


def test_keras_initialisers():
    params = init_params(jax.random.key(1), 59, 128)
    bias = np.asarray(params["lstm"]["bias"])
    assert (bias[128:256] == 1).all() and (np.delete(bias, np.s_[128:256]) == 0).all()
    r = np.asarray(params["lstm"]["recurrent_kernel"])
    np.testing.assert_allclose(r @ r.T, np.eye(128), atol=1e-5)  # orthogonal rows
    for kernel, fan in (
        (params["lstm"]["kernel"], 59 + 512),
        (params["dense"]["kernel"], 128 + 59),
    ):
        limit = np.sqrt(6 / fan)  # glorot-uniform
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    assert (np.asarray(params["dense"]["bias"]) == 0).all()


def test_forward_shapes_and_jit():
    params = init_params(jax.random.key(0), 11, 8)
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
    ((h, c),), logits = util.forward(params, ids)  # op by op, against jit below
    assert h.shape == c.shape == (3, 8) and logits.shape == (3, 11) and logits.dtype == jnp.float32
    ((_, _),), jitted = forward(params, ids)
    np.testing.assert_allclose(jitted, logits, rtol=1e-6, atol=1e-6)


def test_forward_matches_a_hand_written_cell_loop():
    params = init_params(jax.random.key(2), 7, 5)
    ids = np.array([[1, 4, 6, 0]])
    p = jax.tree.map(np.asarray, params)
    h = np.zeros((1, 5), np.float32)
    c = np.zeros((1, 5), np.float32)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    for t in range(ids.shape[1]):
        x = np.eye(7, dtype=np.float32)[ids[:, t]]
        z = x @ p["lstm"]["kernel"] + h @ p["lstm"]["recurrent_kernel"] + p["lstm"]["bias"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
    _, logits = forward(params, jnp.asarray(ids))
    np.testing.assert_allclose(logits, h @ p["dense"]["kernel"] + p["dense"]["bias"], atol=1e-5)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_left_padding_with_valid_mask_equals_the_short_window():
    params = init_params(jax.random.key(3), 9, 6)
    short = jnp.array([[3, 1, 4]])
    padded = jnp.array([[0, 0, 3, 1, 4]])
    valid = jnp.array([False, False, True, True, True])
    ((h1, c1),), l1 = forward(params, short, valid=jnp.ones(3, bool))
    ((h2, c2),), l2 = forward(params, padded, valid=valid)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(l1, l2)


def test_carry_continues_a_sequence():
    params = init_params(jax.random.key(4), 9, 6)
    ids = jnp.array([[1, 2, 3, 4, 5, 6]])
    _, whole = forward(params, ids)
    carry, _ = forward(params, ids[:, :4])
    _, rest = forward(params, ids[:, 4:], carry)
    np.testing.assert_allclose(whole, rest, atol=1e-6)


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return init_params(jax.random.key(seed), vocab, hidden, layers)


def test_every_position_logits_equal_the_last_step_of_each_prefix():
    params = _params(layers=2, seed=3)
    ids = jax.random.randint(jax.random.key(4), (2, 6), 0, 9)
    _, every = forward(params, ids, all_steps=True)
    assert every.shape == (2, 6, 9)
    for t in (1, 4, 6):
        _, last = forward(params, ids[:, :t])
        np.testing.assert_allclose(every[:, t - 1], last, atol=1e-6)


def test_layers_shapes_and_names():
    params = _params(vocab=7, hidden=5, layers=3)
    assert sorted(params) == ["dense", "lstm", "lstm_1", "lstm_2"]
    assert params["lstm"]["kernel"].shape == (7, 20)
    assert params["lstm_2"]["kernel"].shape == (5, 20)
    assert spec_of(params) == model.Spec(7, 5, 3)
    assert params["lstm_1"]["bias"][5:10].tolist() == [1.0] * 5  # forget gate starts open


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_dropout_is_keyed_scaled_and_off_without_a_key():
    x = jnp.ones((200, 50))
    a = apply_dropout(x, 0.3, jax.random.key(0))
    assert jnp.array_equal(a, apply_dropout(x, 0.3, jax.random.key(0)))
    assert not jnp.array_equal(a, apply_dropout(x, 0.3, jax.random.key(1)))
    kept = np.asarray(a) != 0
    assert abs(kept.mean() - 0.7) < 0.02 and np.allclose(np.asarray(a)[kept], 1 / 0.7)
    assert apply_dropout(x, 0.3, None) is x
    params = _params(layers=2)
    ids = jnp.array([[1, 2, 3, 4]])
    plain = forward(params, ids)[1]
    no_key = Draws(dropout=0.5)
    assert jnp.array_equal(forward(params, ids, draws=no_key)[1], plain)
    keyed = Draws(dropout=0.5, dropout_key=jax.random.key(0))
    assert not jnp.array_equal(forward(params, ids, draws=keyed)[1], plain)


def test_the_model_asks_the_cell_for_its_state_and_shape():
    params = _params(vocab=7, hidden=5, layers=3)
    assert cells.dims(params["lstm"]) == (7, 5)
    assert cells.dims(params["lstm_2"]) == (5, 5)
    carry = model.zero_carry(4, 5, 3)
    assert len(carry) == 3 and all(h.shape == c.shape == (4, 5) for h, c in carry)
    assert all(not np.asarray(x).any() for x in jax.tree.leaves(carry))
    _, from_zero = forward(params, jnp.array([[1, 2], [3, 4]]), model.zero_carry(2, 5, 3))
    _, default = forward(params, jnp.array([[1, 2], [3, 4]]))
    np.testing.assert_allclose(from_zero, default, atol=1e-6)


def test_locked_dropout_keeps_one_mask_per_sequence_and_weight_drop_masks_the_kernel():
    x = jnp.ones((6, 40, 30))  # time-major [T, B, F]
    locked = np.asarray(apply_dropout(x, 0.5, jax.random.key(0), locked=True))
    assert (locked == locked[0]).all() and 0.3 < (locked[0] == 0).mean() < 0.7
    assert not (np.asarray(apply_dropout(x, 0.5, jax.random.key(0)))[1:] == locked[0]).all()
    params = _params(layers=2)
    ids = jnp.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    plain = forward(params, ids)[1]
    key = jax.random.key(3)
    masks = Draws(weight_drop=0.5, weight_key=key)
    dropped = forward(params, ids, draws=masks)[1]
    assert not jnp.array_equal(dropped, plain)
    assert jnp.array_equal(dropped, forward(params, ids, draws=masks)[1])
    no_key = Draws(weight_drop=0.5)
    assert jnp.array_equal(forward(params, ids, draws=no_key)[1], plain)
    # a kernel masked by hand gives the same numbers (layer n's mask: fold_in(key, n))
    masked = dict(params)
    for n, name in enumerate(("lstm", "lstm_1")):
        kernel = apply_dropout(params[name]["recurrent_kernel"], 0.5, jax.random.fold_in(key, n))
        masked[name] = {**params[name], "recurrent_kernel": kernel}
    np.testing.assert_allclose(forward(masked, ids)[1], dropped, rtol=RTOL, atol=ATOL)


def test_recurrent_dropout_masks_h_per_sequence_only_while_training():
    """A key and a rate change the outputs, the same key gives the same numbers, no key (or
    rate 0, or a masked scan as in sampling) gives the plain model; the original one-layer path
    (loss after the last step) takes the mask too."""
    params = _params(layers=2)
    ids = jnp.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    plain = forward(params, ids, all_steps=True)[1]
    key = jax.random.key(4)
    masks = Draws(recurrent_dropout=0.5, recurrent_key=key)
    dropped = forward(params, ids, all_steps=True, draws=masks)[1]
    assert not jnp.array_equal(dropped, plain)
    again = forward(params, ids, all_steps=True, draws=masks)[1]
    assert jnp.array_equal(dropped, again)
    no_key = Draws(recurrent_dropout=0.5)
    assert jnp.array_equal(forward(params, ids, all_steps=True, draws=no_key)[1], plain)
    assert jnp.array_equal(
        forward(params, ids, all_steps=True, draws=Draws(dropout_key=key))[1], plain
    )
    # a row's mask follows its index in the whole batch: the second row alone, as row 1
    second = forward(params, ids[1:], all_steps=True, draws=masks.replace(first_row=1))[1]
    np.testing.assert_allclose(second[0], dropped[1], rtol=RTOL, atol=ATOL)
    valid = jnp.ones(4, bool)  # the inference scan (a valid mask) draws nothing
    masked_scan = forward(params, ids, valid=valid, all_steps=True, draws=masks)[1]
    np.testing.assert_allclose(masked_scan, plain, rtol=RTOL, atol=ATOL)
    # the first step sees h = 0, so its outputs cannot change; later steps do
    np.testing.assert_allclose(dropped[:, 0], plain[:, 0], rtol=RTOL, atol=ATOL)
    one = {"lstm": params["lstm"], "dense": params["dense"]}
    last = forward(one, ids)[1]
    dropped_last = forward(one, ids, draws=masks)[1]
    assert not jnp.array_equal(dropped_last, last)


def test_draws_are_a_pytree_with_static_rates_and_per_layer_keys():
    """The rates are part of the tree's structure (a compiled program's constants), keys and
    indices its leaves; layer n's keys are the step's folded with n; no key draws nothing."""
    key = jax.random.key(7)
    draws = Draws(dropout=0.3, weight_drop=0.2, dropout_key=key, length=jnp.int32(4))
    assert len(jax.tree.leaves(draws)) == 3  # the dropout key, first row, length
    assert jax.tree.structure(draws) != jax.tree.structure(draws.replace(dropout=0.5))
    again = jax.jit(lambda d: d)(draws)
    assert again.dropout == 0.3 and int(again.length) == 4
    second = draws.layer(1)
    data = jax.random.key_data
    assert jnp.array_equal(data(second.dropout_key), data(jax.random.fold_in(key, 1)))
    assert second.weight_key is None and second.h_mask(2, 3) is None
    masks = Draws(recurrent_dropout=0.5, recurrent_key=key).h_mask(4, 6)
    assert masks.shape == (4, 6) and set(np.unique(masks)) <= {0.0, 2.0}
