"""The cells (`charjax.cells`): each equals a step-by-step loop written from its paper's
equations (dense one-hot inputs, full matrices), with and without the training draws, and
its gradient equals autodiff of that loop; a tree names its cell and options; sampling is
deterministic per key; dynamic evaluation adapts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from util import bound, forward, init_params, jit_forward, spec_of

from charjax import cells, dynamic, evaluate, model, sample, step
from charjax.config import Config
from charjax.draws import NONE, Draws
from charjax.errors import CharjaxError

V, H = 11, 8
CASES = {
    "lstm": ("lstm", cells.PLAIN),
    "lnlstm": ("lnlstm", cells.PLAIN),
    "mogrifier": ("mogrifier", cells.Options(5, 0)),
    "mogrifier-rank": ("mogrifier", cells.Options(4, 3)),
}


def _params(case, layers=2, seed=0):
    """A tree of `case`'s cell, every value moved off its initial one (gains off 1, shifts off
    0: a misplaced gain or shift changes the numbers)."""
    cell, options = CASES[case]
    params = init_params(jax.random.key(seed), V, H, layers, cell, options)
    rng = np.random.default_rng(seed + 100)  # NumPy's draws: nothing to compile per shape
    return jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape, np.float32), params)


def _ln(v):
    mean = v.mean(-1, keepdims=True)
    return (v - mean) / jnp.sqrt(((v - mean) ** 2).mean(-1, keepdims=True) + 1e-5)


def _gates_ln(z):
    return jnp.concatenate([_ln(part) for part in jnp.split(z, 4, axis=-1)], axis=-1)


def _lstm_update(z, c, squash=lambda c: c):
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(squash(c)), c


def _matrices(p, name):
    """A mogrifier layer's round matrices of `name` (q or r), full."""
    if f"mogrify_{name}" in p:
        return list(p[f"mogrify_{name}"])
    pairs = zip(p[f"mogrify_{name}_left"], p[f"mogrify_{name}_right"], strict=True)
    return [left @ right for left, right in pairs]


def _reference_step(cell, p, x, h, c):
    """One step of `cell` from its equations: x float32[B, F] (one-hot for chars)."""
    if cell == "lstm":
        return _lstm_update(x @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"], c)
    if cell == "lnlstm":
        z = (
            _gates_ln(x @ p["kernel"]) * p["input_gain"]
            + _gates_ln(h @ p["recurrent_kernel"]) * p["recurrent_gain"]
            + p["bias"]
        )
        return _lstm_update(z, c, lambda c: _ln(c) * p["cell_gain"] + p["cell_bias"])
    has_r = "mogrify_r" in p or "mogrify_r_left" in p
    q, r = _matrices(p, "q"), (_matrices(p, "r") if has_r else [])
    for k in range(len(q) + len(r)):  # rounds 1, 3, ... gate x; 2, 4, ... gate h
        if k % 2 == 0:
            x = 2 * jax.nn.sigmoid(h @ q[k // 2]) * x
        else:
            h = 2 * jax.nn.sigmoid(x @ r[k // 2]) * h
    return _lstm_update(x @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"], c)


def _reference(params, ids, draws=NONE):
    """(final carries, logits [B, T, V]) of a Python loop over the steps, with the draws'
    masks applied where the model applies them."""
    cell = spec_of(params).cell
    layers = [params[name] for name in spec_of(params).layer_names()]
    batch, steps = ids.shape
    length = steps if draws.length is None else int(draws.length)
    states = [(jnp.zeros((batch, H)), jnp.zeros((batch, H))) for _ in layers]
    finals, logits = [None] * len(layers), []
    masks = []
    for n, p in enumerate(layers):
        d = draws.layer(n)
        hmask = d.h_mask(batch, H)
        masks.append((d.outputs(jnp.ones((steps, batch, H))), hmask))
        layers[n] = {**p, "recurrent_kernel": d.recurrent_kernel(p["recurrent_kernel"])}
    for t in range(steps):
        x = jax.nn.one_hot(ids[:, t], V)
        for n, p in enumerate(layers):
            out_mask, hmask = masks[n]
            h, c = states[n]
            # recurrent dropout scales the h fed in, not the carry kept
            states[n] = _reference_step(cell, p, x, h if hmask is None else h * hmask, c)
            x = states[n][0] * out_mask[t]
            if t == length - 1:
                finals[n] = states[n]
        logits.append(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    return tuple(finals), jnp.stack(logits, axis=1)


IDS = np.asarray(jax.random.randint(jax.random.key(9), (4, 7), 0, V), np.int32)


SLOW = pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host


@pytest.mark.parametrize(
    "case",  # the LN-LSTM fast (the preset's cell); the LSTM's equations also in test_model
    [pytest.param("lstm", marks=SLOW), "lnlstm", pytest.param("mogrifier", marks=SLOW),
     pytest.param("mogrifier-rank", marks=SLOW)],
)  # fmt: skip
def test_each_cell_equals_its_equations_step_by_step(case):
    params = _params(case)
    carry, logits = jit_forward(params, IDS, all_steps=True)
    want_carry, want = jax.jit(_reference)(params, IDS)
    np.testing.assert_allclose(logits, want, atol=2e-5)
    np.testing.assert_allclose(carry, want_carry, atol=2e-5)
    # the last step alone, and a carry continued from there
    _, last = jit_forward(params, IDS)
    np.testing.assert_allclose(last, want[:, -1], atol=2e-5)
    _, on = jit_forward(params, IDS[:, 4:], jit_forward(params, IDS[:, :4])[0], all_steps=True)
    np.testing.assert_allclose(on, want[:, 4:], atol=2e-5)


def _training_draws(length):
    keys = jax.random.split(jax.random.key(3), 3)
    return Draws(dropout=0.3, locked=True, weight_drop=0.3, recurrent_dropout=0.25,
                 dropout_key=keys[0], weight_key=keys[1], recurrent_key=keys[2],
                 length=jnp.int32(length))  # fmt: skip


@SLOW  # autodiff of a loop over the steps compiles for 10-25 s a cell
@pytest.mark.parametrize("case", CASES)
def test_each_cells_training_gradient_equals_autodiff_of_its_equations(case):
    """The training path (draws: locked dropout, weight-drop, recurrent dropout and a window
    length; the fast scan, or autodiff of the plain scan for the mogrifier) against jax.grad of
    the step-by-step loop."""
    params = _params(case, seed=1)
    draws = _training_draws(length=5)
    targets = np.roll(IDS, -1, axis=1)

    def loss(run):
        def f(p):
            carry, logits = run(p)
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()
            return nll + sum(0.1 * (h**2).sum() + 0.05 * c.sum() for h, c in carry)

        return jax.value_and_grad(f)

    fast = lambda p: forward(p, IDS, all_steps=True, draws=draws)  # noqa: E731
    value, grads = jax.jit(loss(fast))(params)
    want_value, want_grads = jax.jit(loss(lambda p: _reference(p, IDS, draws)))(params)
    np.testing.assert_allclose(value, want_value, rtol=1e-5, atol=1e-5)
    for path, got in jax.tree_util.tree_leaves_with_path(grads):
        want = want_grads
        for key in path:
            want = want[key.key]
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=str(path))
    assert any(np.abs(g).max() > 1e-3 for g in jax.tree.leaves(grads))


@SLOW
@pytest.mark.parametrize("case", ["lstm", "lnlstm"])
def test_an_lstm_shaped_cell_through_autodiff_equals_its_fast_scan(case):
    """--lstm-kernel autodiff: the cell trained as the mogrifier is, the same numbers."""
    params = _params(case, seed=2)
    draws = _training_draws(length=6)

    def value_and_grad(kernel):
        def f(p):
            carry, logits = forward(p, IDS, all_steps=True, draws=draws, kernel=kernel)
            return (logits**2).sum() + sum(h.sum() for h, _ in carry)

        return jax.jit(jax.value_and_grad(f))(params)

    (value, grads), (want_value, want) = value_and_grad("autodiff"), value_and_grad("xla")
    np.testing.assert_allclose(value, want_value, rtol=1e-6, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _shapes(case, layers=2):
    """`case`'s tree as shapes and dtypes (nothing computed: what the names and options are
    read from)."""
    cell, options = CASES[case]
    return jax.eval_shape(lambda: init_params(jax.random.key(0), V, H, layers, cell, options))


def test_a_tree_names_its_cell_and_the_lstm_tree_is_unchanged():
    lstm = _shapes("lstm", layers=3)
    assert sorted(lstm) == ["dense", "lstm", "lstm_1", "lstm_2"]
    assert sorted(lstm["lstm_1"]) == ["bias", "kernel", "recurrent_kernel"]
    for cell, options in CASES.values():
        spec = model.Spec(V, H, 3, cell, options)
        params = jax.eval_shape(lambda spec=spec: spec.init(jax.random.key(0)))
        assert sorted(params) == sorted([*spec.layer_names(), "dense"])
        assert spec.layer_names() == [cell, f"{cell}_1", f"{cell}_2"]
        assert spec_of(params) == spec  # what the tests' helper reads back
    ln = _shapes("lnlstm")
    assert {n: v.shape for n, v in ln["lnlstm_1"].items()} == {
        "kernel": (H, 4 * H), "recurrent_kernel": (H, 4 * H), "bias": (4 * H,),
        "input_gain": (4 * H,), "recurrent_gain": (4 * H,), "cell_gain": (H,), "cell_bias": (H,),
    }  # fmt: skip
    low = _shapes("mogrifier-rank")  # 4 rounds: 2 gate x, 2 gate h; the char layer full rank
    assert low["mogrifier"]["mogrify_q"].shape == (2, H, V)
    assert low["mogrifier"]["mogrify_r"].shape == (2, V, H)
    assert low["mogrifier_1"]["mogrify_q_left"].shape == (2, H, 3)
    assert low["mogrifier_1"]["mogrify_r_right"].shape == (2, 3, H)
    assert (
        "mogrify_r"
        not in jax.eval_shape(
            lambda: init_params(jax.random.key(0), V, H, 1, "mogrifier", cells.Options(1, 0))
        )["mogrifier"]
    )  # one round gates x only


@SLOW  # a rank-3 draw is what compiles slowly
def test_a_stack_of_matrices_is_initialised_as_glorot_uniform_per_matrix():
    rule = jax.nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=0)
    want = rule(jax.random.key(5), (3, 8, 11))
    np.testing.assert_array_equal(cells._stacked(jax.random.key(5), (3, 8, 11)), want)


def test_the_config_builds_its_cell_and_refuses_bad_options():
    cfg = Config(hidden=H, layers=2, cell="mogrifier", mogrify_rounds=3, mogrify_rank=2)
    params = step.state_shape(V, cfg).params  # the shapes a run's state is built with
    assert model.Spec.of(cfg, V).options == spec_of(params).options == cells.Options(3, 2)
    plain = step.state_shape(V, cfg.replace(cell="lnlstm")).params
    assert spec_of(plain).options == cells.PLAIN and "lnlstm_1" in plain
    assert model.Spec.of(cfg.replace(cell="lnlstm"), V) == spec_of(plain)
    with pytest.raises(CharjaxError, match="--mogrify-rounds must be >= 1"):
        cfg.replace(mogrify_rounds=0).check()
    with pytest.raises(CharjaxError, match="--mogrify-rank must be >= 0"):
        cfg.replace(mogrify_rank=-1).check()
    with pytest.raises(CharjaxError, match="--cell must be one of lstm, lnlstm, mogrifier"):
        cfg.replace(cell="gru").check()
    with pytest.raises(CharjaxError, match="--lstm-kernel must be one of auto, xla, autodiff"):
        cfg.replace(lstm_kernel="pallas").check()
    with pytest.raises(CharjaxError, match="--mogrify-rank .* needs --cell mogrifier and --layers"):
        cfg.replace(layers=1).check()
    with pytest.raises(CharjaxError, match="needs --cell mogrifier"):
        cfg.replace(cell="lnlstm").check()
    with pytest.raises(CharjaxError, match="--mogrify-rank 8 is not below --hidden 8"):
        cfg.replace(mogrify_rank=8).check()


@SLOW  # both sampling modes of each cell compile: ~15 s a cell
@pytest.mark.parametrize("case", ["lnlstm", "mogrifier-rank"])
def test_sampling_each_cell_is_deterministic_per_key(case):
    params = _params(case)
    prime = np.array([1, 5, 2, 7, 3])

    def gen(key, mode):
        return np.asarray(
            sample.generate(
                bound(params),
                prime,
                jax.random.key(key),
                sample.Settings([0.5, 1.0], length=30),
                maxlen=8,
                mode=mode,
            )  # fmt: skip
        )

    for mode in sample.MODES:
        assert (gen(7, mode) == gen(7, mode)).all()
        assert (gen(7, mode) != gen(8, mode)).any()


@SLOW
@pytest.mark.parametrize("case", ["lnlstm", "mogrifier"])
def test_dynamic_evaluation_adapts_with_each_cell(case):
    params = init_params(jax.random.key(0), 9, 16, 1, *CASES[case])
    phrase = np.asarray(jax.random.randint(jax.random.key(4), (13,), 0, 9), np.int32)
    ids = np.tile(phrase, 12)
    static = evaluate.score_ids(bound(params), ids, mode="stateful")
    still = dynamic.score(bound(params), ids, rate=0.0, decay=0.0, segment=10)
    np.testing.assert_allclose(still.nats_per_char, static.nats_per_char, rtol=1e-5, atol=1e-6)
    adapted = dynamic.score(bound(params), ids, rate=3.0, decay=0.0, segment=10)
    assert adapted.nats_per_char < static.nats_per_char - 0.2
