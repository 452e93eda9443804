"""Streaming generation: `stream` yields a sample's ids block by block as they are made, from
the same two jitted pieces as `sample.generate` (read the prime, then advance one char per
key), with the same keys, so the text is byte for byte `generate`'s."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from charjax import model, sample

# The two pieces of `sample._generate`, run block by block.
_start = jax.jit(sample.read_prime, static_argnames=("samples", "mode"))
_block = jax.jit(sample.advance, static_argnames=("mode", "filtered"), donate_argnums=1)


@functools.partial(jax.jit, static_argnames=("size",))
def _step_keys(sample_keys, start, size: int):
    """keys [S, size] equal to `split(k, length)[start:start + size]` for each sample key k,
    whatever `length`: threefry's split is counter-based (key i hashes the counter i), so a
    block's keys are computed alone, in memory that does not grow with the length."""
    counts = jnp.asarray(start, jnp.uint32) + jnp.arange(size, dtype=jnp.uint32)
    both = jnp.concatenate([jnp.zeros_like(counts), counts])  # (high, low) words of each counter

    def keys_of(key_data):
        bits = threefry_2x32(key_data, both)
        return jnp.stack([bits[:size], bits[size:]], axis=-1)

    data = jax.vmap(keys_of)(jax.random.key_data(sample_keys))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(sample_keys))


def _counter_based(key) -> bool:
    """Whether `_step_keys` reproduces `split` (the default threefry, partitionable mode)."""
    return bool(jax.config.jax_threefry_partitionable) and "threefry" in str(
        jax.random.key_impl(key)
    )


def stream(net: model.Model, prime_ids, key: jax.Array, settings: sample.Settings, *,
           mode: str = "window", maxlen: int = 60, block: int = 1024):  # fmt: skip
    """`sample.generate`, block by block: an iterator of ids int32[S, <= block] (rows: each
    temperature's samples in turn, S in all), each as soon as its block is done; the arguments
    are checked at once, before the first block. Joined along the last axis they are exactly
    `generate(...)`'s ids (same key, same text); memory follows the block, not the length."""
    run = sample.prepare(net, prime_ids, key, settings, mode=mode, maxlen=maxlen)
    loop = _start(net, run.prime, run.valid, samples=len(run.temperatures), mode=mode)
    every = None
    if not _counter_based(key):  # another PRNG: all the keys up front (8 bytes a char)
        every = jax.vmap(lambda k: jax.random.split(k, settings.length))(run.sample_keys)
    return _blocks(net, loop, run, every, settings, block, mode)


def _blocks(net, loop, run, every, settings, block: int, mode: str):
    for begin in range(0, settings.length, block):
        size = min(block, settings.length - begin)
        if every is None:
            keys = _step_keys(run.sample_keys, begin, size)
        else:
            keys = every[:, begin : begin + size]
        loop, ids = _block(net, loop, keys, run.temperatures, *run.filters, mode=mode,
                           filtered=settings.filtered)  # fmt: skip
        yield np.asarray(ids)
