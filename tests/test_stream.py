"""Streaming generation: block by block, byte for byte what `generate` makes."""

import jax
import numpy as np
import pytest
from util import bound, init_params

from charjax import sample, stream
from charjax.errors import CharjaxError

V, H = 13, 16
PRIME = np.array([1, 5, 2, 7, 3, 3, 9, 0])


@pytest.fixture(scope="module")
def params():
    return init_params(jax.random.key(0), V, H, 2)


def test_block_keys_are_the_split_keys_whatever_the_length():
    keys = jax.random.split(jax.random.key(4), 3)
    whole = jax.vmap(lambda k: jax.random.split(k, 1000))(keys)
    for begin, size in ((0, 7), (500, 100), (993, 7)):
        block = stream._step_keys(keys, begin, size)
        np.testing.assert_array_equal(
            jax.random.key_data(block), jax.random.key_data(whole[:, begin : begin + size])
        )


@pytest.mark.parametrize("mode", sample.MODES)
@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_the_blocks_joined_are_generates_ids(params, mode):
    settings = sample.Settings([0.0, 0.7, 1.3], length=45, num_samples=2, top_k=5, top_p=0.9)
    how = dict(mode=mode, maxlen=8)
    whole = np.asarray(sample.generate(bound(params), PRIME, jax.random.key(7), settings, **how))
    blocks = list(stream.stream(bound(params), PRIME, jax.random.key(7), settings, block=16, **how))
    assert [b.shape for b in blocks] == [(6, 16), (6, 16), (6, 13)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole.reshape(6, 45))


def test_bad_arguments_are_refused_before_any_block(params):
    with pytest.raises(CharjaxError, match="length must be >= 0"):
        stream.stream(bound(params), PRIME, jax.random.key(0), sample.Settings([0.5], length=-1))
    assert (
        list(
            stream.stream(bound(params), PRIME, jax.random.key(0), sample.Settings([0.5], length=0))
        )
        == []
    )
