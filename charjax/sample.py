"""Text generation in one jitted program: window (faithful) or stateful mode, batched.

`generate` compiles once per (length, mode, maxlen, model shape, batch, filtering on or off);
temperatures, top-k and top-p values, prime contents and keys are traced, so changing them never
recompiles.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from charjax import model, objective
from charjax.config import READINGS
from charjax.errors import CharjaxError

MODES = READINGS
PRECOMPUTE_NOISE_MAX = 1 << 24  # floats (64 MB) of Gumbel noise drawn before the loop


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set logits outside the top-k (k > 0) and outside the top-p nucleus (p < 1) to -inf."""
    vocab = logits.shape[-1]
    ranked = jnp.sort(logits)[::-1]
    kth = ranked[jnp.clip(top_k - 1, 0, vocab - 1)]
    logits = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
    # Nucleus: keep the most probable chars until their mass reaches p (the first always stays).
    probs = jax.nn.softmax(logits)
    sorted_probs = jnp.sort(probs)[::-1]
    mass_before = jnp.cumsum(sorted_probs) - sorted_probs
    cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_probs, jnp.inf))
    return jnp.where((top_p < 1.0) & (probs < cutoff), -jnp.inf, logits)


def pick(noise: jax.Array, logits: jax.Array, temperatures, top_k, top_p, filtered=None):
    """One char id per row of logits float32[S, V] (Gumbel noise [S, V], temperatures [S]).

    argmax(logits/T + Gumbel noise) is a draw from softmax(logits/T) (what
    `jax.random.categorical` does); T = 0 is the plain argmax.

    Dividing logits by T is the original's `exp(log(p)/T)` reweighting, done on logits so that
    zero probabilities never reach a log. Filtering runs only when top-k or top-p is on
    (`filtered`: known to be on (True) or off (False), as the sampling loop decides once;
    None: decided here).
    """
    safe_t = jnp.where(temperatures > 0, temperatures, 1.0)
    # Shifting the max logit to 0 first keeps tiny temperatures from overflowing to +inf.
    scaled = (logits - logits.max(axis=-1, keepdims=True)) / safe_t[:, None]
    if filtered is None:
        filtered = (top_k > 0) | (top_p < 1.0)
    on = lambda x: jax.vmap(filter_logits, in_axes=(0, None, None))(x, top_k, top_p)  # noqa: E731
    if isinstance(filtered, bool):
        scaled = on(scaled) if filtered else scaled
    else:
        scaled = lax.cond(filtered, on, lambda x: x, scaled)
    drawn = jnp.argmax(scaled + noise, axis=-1)
    return jnp.where(temperatures > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def read_prime(net: model.Model, prime, valid, samples: int, mode: str):
    """The loop state after the model `net` read the prime int32[P] (left-padded; valid
    bool[P]) for `samples` rows: window mode (window, valid, logits), stateful mode (carry,
    logits)."""
    window = jnp.broadcast_to(prime, (samples, prime.shape[0]))
    carry, logits = net(window, valid=valid)
    return (window, valid, logits) if mode == "window" else (carry, logits)


def advance(net: model.Model, loop, keys, temperatures, top_k, top_p, mode: str, filtered: bool):
    """One char per key and row: keys [S, B] -> (loop state, ids int32[S, B]). `filtered`
    (static): whether top-k or top-p is on, decided once: a conditional inside the loop would
    cost a device-to-host read of its predicate per char on a GPU."""
    if mode == "window":
        # Each step re-reads the last `len(prime)` chars from a zero state, like the original.
        def step(loop, step_noise, filtered):
            window, valid, logits = loop
            ids = pick(step_noise, logits, temperatures, top_k, top_p, filtered)
            window = jnp.concatenate([window[:, 1:], ids[:, None]], axis=1)
            valid = jnp.concatenate([valid[1:], jnp.ones((1,), bool)])
            _, logits = net(window, valid=valid)
            return (window, valid, logits), ids

    else:
        # Carry (h, c) across steps: O(1) work per char.
        def step(loop, step_noise, filtered):
            carry, logits = loop
            ids = pick(step_noise, logits, temperatures, top_k, top_p, filtered)
            logits, carry = net.step(ids, carry)
            return (carry, logits), ids

    vocab = loop[-1].shape[-1]
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (vocab,)))  # keys [S] -> noise [S, V]
    keys = jnp.swapaxes(keys, 0, 1)  # [B, S]
    if keys.size * vocab <= PRECOMPUTE_NOISE_MAX:
        # Drawing all the noise before the loop takes the RNG off the sequential path; the
        # draws are the same as inside the loop, so both ways give the same text.
        xs, noise_of = jax.vmap(gumbel)(keys), (lambda x: x)
    else:  # long texts with large vocabularies: draw each step's noise in the loop
        xs, noise_of = keys, gumbel
    # Unrolled by the platform's factor: one iteration of a GPU loop costs microseconds of
    # control, about a char's own work in stateful mode (1 on CPU: the loop as before).
    loop, ids = lax.scan(
        lambda loop, x: step(loop, noise_of(x), filtered), loop, xs, unroll=net.spec.loop.unroll
    )
    return loop, jnp.swapaxes(ids, 0, 1)


@functools.partial(jax.jit, static_argnames=("length", "mode", "filtered"))
def _generate(net, prime, valid, keys, temperatures, top_k, top_p, *, length, mode, filtered):
    """prime int32[P] left-padded (valid bool[P]); keys [S, length]; -> ids int32[S, length]."""
    loop = read_prime(net, prime, valid, temperatures.shape[0], mode)
    return advance(net, loop, keys, temperatures, top_k, top_p, mode, filtered)[1]


class Settings(NamedTuple):
    """What to sample, as one value that the commands, `generate` and `stream.stream` pass:
    temperatures (a number or a 1-D list; 0 = greedy), chars per text, texts per temperature,
    top-k (0 = off) and top-p (1 = off)."""

    temperatures: float | tuple = 0.5
    length: int = 400
    num_samples: int = 1
    top_k: int = 0
    top_p: float = 1.0

    @property
    def filtered(self) -> bool:
        """Whether top-k or top-p filtering is on (`advance`'s static `filtered`)."""
        return self.top_k > 0 or self.top_p < 1.0

    def check(self, vocab: int) -> None:
        """A one-line error naming the first setting out of range (`vocab`: the model's)."""
        temperatures = np.asarray(self.temperatures, np.float32)
        if not np.all(np.isfinite(temperatures)) or np.any(temperatures < 0):
            raise CharjaxError(
                f"temperature must be a finite number >= 0 (0 = greedy), got "
                f"{temperatures.tolist()}"
            )
        if not 0 <= self.top_k <= vocab:
            raise CharjaxError(f"top-k must be between 0 (off) and the vocabulary size {vocab}")
        if not (0 < self.top_p <= 1):
            raise CharjaxError(f"top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.length < 0:
            raise CharjaxError(f"length must be >= 0, got {self.length}")
        if self.num_samples < 1:
            raise CharjaxError(f"num-samples must be >= 1, got {self.num_samples}")


def _pad_prime(prime_ids, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad to `size` (keeping the last `size` ids) with a validity mask."""
    prime_ids = np.asarray(prime_ids, np.int32)[-size:] if size else np.zeros(0, np.int32)
    pad = size - prime_ids.shape[0]
    return (
        np.concatenate([np.zeros(pad, np.int32), prime_ids]),
        np.arange(size) >= pad,
    )


class Prepared(NamedTuple):
    """What `generate` and `stream.stream` start from, checked and laid out."""

    prime: np.ndarray  # int32[P], left-padded
    valid: np.ndarray  # bool[P]
    temperatures: jax.Array  # float32[S]: each temperature `num_samples` times
    sample_keys: jax.Array  # [S]: each sample's key; step t uses split(key, length)[t]
    shape: tuple  # of the result: temperature.shape (+ samples) + (length,)
    filters: tuple  # (top_k int32, top_p float32): traced, so changing them never recompiles


def prepare(net, prime_ids, key, settings: Settings, *, mode, maxlen) -> Prepared:
    if mode not in MODES:
        raise CharjaxError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    settings.check(net.spec.vocab)
    temps, samples = np.asarray(settings.temperatures, np.float32), settings.num_samples
    flat_t = np.repeat(temps.reshape(-1), samples)
    prime_len = len(prime_ids)
    if mode == "window":
        size = maxlen
    else:  # bucket prime lengths (powers of two) so most primes share one compilation
        size = max(maxlen, 1 << max(prime_len - 1, 0).bit_length())
    prime, valid = _pad_prime(prime_ids, size)
    shape = temps.shape + ((samples,) if samples > 1 else ()) + (settings.length,)
    filters = (jnp.int32(settings.top_k), jnp.float32(settings.top_p))
    keys = jax.random.split(key, flat_t.size)
    return Prepared(prime, valid, jnp.asarray(flat_t), keys, shape, filters)


def generate(net: model.Model, prime_ids, key: jax.Array, settings: Settings, *,
             mode: str = "window", maxlen: int = 60) -> jax.Array:  # fmt: skip
    """Generate `settings.length` char ids after `prime_ids` with the model `net`.

    The result is int32[*temperatures.shape, length], with a sample axis before `length` when
    `settings.num_samples > 1`. Each (temperature, sample) gets its own key split from `key`,
    so a fixed key always gives the same texts. `mode="window"` feeds the model the last
    `maxlen` chars at every step from a zero state (the original); "stateful" carries the LSTM
    state, reading the whole prime once.
    """
    run = prepare(net, prime_ids, key, settings, mode=mode, maxlen=maxlen)
    keys = jax.vmap(lambda k: jax.random.split(k, settings.length))(run.sample_keys)
    ids = _generate(net, run.prime, run.valid, keys, run.temperatures, *run.filters,
                    length=settings.length, mode=mode, filtered=settings.filtered)  # fmt: skip
    return ids.reshape(run.shape)


def epoch_samples(net, corpus, sample_key, epoch: int, cfg) -> dict:
    """The original's per-epoch show: a random maxlen-char seed of the corpus, then
    `cfg.sample_length` chars per temperature -> {"seed": str, "texts": {"0.2": str, ...}}."""
    seed_key, gen_key = jax.random.split(jax.random.fold_in(sample_key, epoch))
    offset = int(jax.random.randint(seed_key, (), 0, len(corpus.ids) - cfg.maxlen))
    prime = corpus.ids[offset : offset + cfg.maxlen]
    settings = Settings(tuple(cfg.temperatures), cfg.sample_length)
    out = generate(net, prime, gen_key, settings, maxlen=cfg.maxlen, mode=objective.of(cfg).reading)
    texts = {
        f"{t:g}": corpus.vocab.decode(row) for t, row in zip(cfg.temperatures, out, strict=False)
    }
    return {"seed": corpus.vocab.decode(prime), "texts": texts}
