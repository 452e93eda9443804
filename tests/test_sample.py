import jax
import jax.numpy as jnp
import numpy as np
import pytest
from util import bound, forward, init_params, jit_forward

from charjax import sample
from charjax.errors import CharjaxError

V, H, MAXLEN = 13, 16, 8


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0), V, H)


PRIME = np.array([1, 5, 2, 7, 3, 3, 9, 0])


def test_shapes_and_dtypes(params):
    one = sample.generate(
        bound(params), PRIME, jax.random.key(0), sample.Settings(0.5, length=12), maxlen=MAXLEN
    )
    assert one.shape == (12,) and one.dtype == jnp.int32
    many = sample.generate(
        bound(params),
        PRIME,
        jax.random.key(0),
        sample.Settings([0.2, 1.0, 1.2], length=12, num_samples=4),
        maxlen=MAXLEN,
        mode="stateful",
    )
    assert many.shape == (3, 4, 12)
    assert int(many.min()) >= 0 and int(many.max()) < V


@pytest.mark.parametrize("mode", sample.MODES)
def test_same_key_same_text_other_key_other_text(params, mode):
    def gen(key):
        return np.asarray(
            sample.generate(
                bound(params),
                PRIME,
                jax.random.key(key),
                sample.Settings([0.5, 1.0], length=40),
                maxlen=MAXLEN,
                mode=mode,
            )
        )

    assert (gen(7) == gen(7)).all()
    assert (gen(7) != gen(8)).any()
    assert (gen(7)[0] != gen(7)[1]).any()  # each temperature has its own key


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_changing_temperature_key_or_filter_values_does_not_recompile(params):
    """Values are traced; only switching top-k/top-p filtering on or off is static (so that the
    loop holds no per-char conditional), and each way compiles once."""
    for filters in ({}, {"top_k": 1, "top_p": 0.5}):
        first = sample.Settings([0.5, 1.0], length=9, **filters)
        sample.generate(bound(params), PRIME, jax.random.key(0), first, maxlen=MAXLEN)
        before = sample._generate._cache_size()
        for t, k in ((0.2, 1), (1.5, 2), (0.0, 3)):
            changed = {"top_k": 3 + k, "top_p": 0.9} if filters else {}
            settings = sample.Settings([t, 1.0], length=9, **changed)
            sample.generate(bound(params), PRIME[::-1], jax.random.key(k), settings, maxlen=MAXLEN)
        assert sample._generate._cache_size() == before


def _rigged(char: int):
    """Params whose output puts all probability on `char`, whatever the input."""
    params = init_params(jax.random.key(1), V, H)
    dense = {"kernel": jnp.zeros((H, V)), "bias": jnp.full((V,), -1e4).at[char].set(1e4)}
    return {**params, "dense": dense}


@pytest.mark.parametrize("mode", sample.MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.2, 0.5, 1.0, 1.2, 5.0])
def test_rigged_logits_give_the_known_char(mode, temperature):
    out = sample.generate(
        bound(_rigged(4)),
        PRIME,
        jax.random.key(3),
        sample.Settings(temperature, length=30, num_samples=3),
        maxlen=MAXLEN,
        mode=mode,
    )
    assert (np.asarray(out) == 4).all()


def _greedy_reference(params, prime, length, mode):
    """A step-by-step Python loop: the obvious way to generate greedily."""
    ids, carry, out = list(prime), None, []
    if mode == "stateful":
        carry, logits = jit_forward(params, jnp.array([ids]))
    for _ in range(length):
        if mode == "window":
            _, logits = jit_forward(params, jnp.array([ids[-MAXLEN:]]))
        nxt = int(jnp.argmax(logits[0]))
        out.append(nxt)
        ids.append(nxt)
        if mode == "stateful":
            carry, logits = jit_forward(params, jnp.array([[nxt]]), carry)
    return out


@pytest.mark.parametrize("mode", sample.MODES)
@pytest.mark.parametrize(
    "prime", [PRIME, PRIME[:3], np.tile(PRIME, 3)], ids=["full", "short", "long"]
)
def test_greedy_matches_a_step_by_step_loop(params, mode, prime):
    greedy = sample.Settings(0.0, length=10)
    got = sample.generate(bound(params), prime, jax.random.key(0), greedy, maxlen=MAXLEN, mode=mode)
    assert np.asarray(got).tolist() == _greedy_reference(params, prime, 10, mode)


def test_window_and_stateful_agree_on_the_first_char(params):
    for key in range(3):
        firsts = [
            np.asarray(
                sample.generate(
                    bound(params),
                    PRIME,
                    jax.random.key(key),
                    sample.Settings([0.5, 1.0, 1.5], length=1, num_samples=50),
                    maxlen=MAXLEN,
                    mode=m,
                )
            )
            for m in sample.MODES
        ]
        assert (firsts[0] == firsts[1]).all()


def _noise(keys, vocab):
    """Standard Gumbel noise, one row per key: what `pick` turns into a categorical draw."""
    return jax.vmap(lambda k: jax.random.gumbel(k, (vocab,)))(keys)


def test_frequencies_at_t1_match_softmax():
    logits = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
    n = 40_000
    keys = jax.random.split(jax.random.key(5), n)
    draws = jax.jit(sample.pick)(
        _noise(keys, 6),
        jnp.broadcast_to(logits, (n, 6)),
        jnp.ones(n),
        jnp.int32(0),
        jnp.float32(1.0),
    )
    counts = np.bincount(np.asarray(draws), minlength=6)
    expected = n * np.asarray(jax.nn.softmax(logits))
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # 99.9 % quantile of chi-square with 5 degrees of freedom


def test_top_k_and_top_p_keep_only_the_head():
    logits = jnp.log(jnp.array([0.05, 0.3, 0.02, 0.25, 0.2, 0.08, 0.1]))
    n = 5000
    keys = jax.random.split(jax.random.key(6), n)
    batch = jnp.broadcast_to(logits, (n, 7))
    hot = jnp.full(n, 3.0)  # a high temperature flattens the distribution: a harder test
    noise = _noise(keys, 7)
    top3 = np.asarray(sample.pick(noise, batch, hot, jnp.int32(3), jnp.float32(1.0)))
    assert set(top3.tolist()) == {1, 3, 4}
    nucleus = np.asarray(sample.pick(noise, batch, jnp.ones(n), jnp.int32(0), jnp.float32(0.6)))
    assert set(nucleus.tolist()) == {1, 3, 4}  # 0.3 + 0.25 < 0.6 <= 0.3 + 0.25 + 0.2
    everything = np.asarray(sample.pick(noise, batch, hot, jnp.int32(0), jnp.float32(1.0)))
    assert set(everything.tolist()) == set(range(7))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), [0.5, -1.0]])
def test_bad_temperatures_are_refused(params, bad):
    with pytest.raises(CharjaxError, match="temperature"):
        sample.generate(
            bound(params), PRIME, jax.random.key(0), sample.Settings(bad, length=5), maxlen=MAXLEN
        )


def test_other_bad_arguments_are_refused(params):
    for kw, word in (
        ({"mode": "fast"}, "mode"),
        ({"top_k": -1}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"length": -5}, "length"),
        ({"num_samples": 0}, "num-samples"),
    ):
        how = {"mode": kw.pop("mode")} if "mode" in kw else {}
        settings = sample.Settings(0.5, **{"length": 5, **kw})
        with pytest.raises(CharjaxError, match=word):
            sample.generate(bound(params), PRIME, jax.random.key(0), settings, maxlen=MAXLEN, **how)


@pytest.mark.slow  # compiles the sampling loop twice more
def test_noise_drawn_before_or_inside_the_loop_gives_the_same_text(params, monkeypatch):
    args = (bound(params), PRIME, jax.random.key(11), [0.7, 1.3])
    settings = sample.Settings([0.7, 1.3], length=25, top_p=0.95)
    args = (*args[:3], settings)
    before = sample.generate(*args, maxlen=MAXLEN, mode="stateful")
    monkeypatch.setattr(sample, "PRECOMPUTE_NOISE_MAX", 0)
    sample._generate.clear_cache()
    inside = sample.generate(*args, maxlen=MAXLEN, mode="stateful")
    sample._generate.clear_cache()
    np.testing.assert_array_equal(before, inside)


def _params(vocab=9, hidden=8, layers=1, seed=0):
    return init_params(jax.random.key(seed), vocab, hidden, layers)


def test_stacked_models_sample_in_both_modes():
    from charjax import sample

    params = _params(vocab=9, hidden=8, layers=2, seed=9)
    prime = [1, 2, 3, 4, 5]
    _, logits = forward(params, jnp.asarray([prime]))
    for mode in ("window", "stateful"):
        greedy = sample.Settings(0.0, length=6)
        out = sample.generate(bound(params), prime, jax.random.key(0), greedy, mode=mode, maxlen=5)
        assert out.shape == (6,) and int(out[0]) == int(jnp.argmax(logits[0]))
