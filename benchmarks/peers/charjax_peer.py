"""charjax's side of `charjax-bench --peers`: the original recipe's training as `charjax-train`
runs it (jitted chunks of 10 steps on the host's devices), and `charjax-sample`'s stateful
400-char loop (one jitted call), in a process of its own like each peer.
`python -m benchmarks.peers.charjax_peer --steps N`."""

from __future__ import annotations

from benchmarks.environment import versions
from benchmarks.peers import recipe as r


def main() -> None:
    args = r.arguments("charjax_peer")
    from charjax import parallel

    parallel.request_cpu_devices()  # as charjax-train does, before jax starts
    parallel.tune_host_malloc()
    import itertools

    import jax

    from benchmarks.measure import default_corpus, training, windows_of
    from benchmarks.timing import time_calls
    from charjax import model, sample, step
    from charjax.config import Config

    cfg, text = default_corpus()
    assert (cfg.maxlen, cfg.step, cfg.hidden, cfg.batch_size) == (r.MAXLEN, r.STEP, r.HIDDEN,
                                                                   r.BATCH)  # fmt: skip
    state = step.init_state(jax.random.key(0), text.vocab.size, cfg)
    chunks = training(cfg, text.ids, len(text.ids), state, jax.random.key(1),
                      parallel.data_mesh())  # fmt: skip
    # the first call (one chunk: more than the warm-up steps) compiles and is timed apart
    calls = max(1, args.steps // cfg.steps_per_call)
    trained = time_calls(lambda: next(chunks), 1, calls=calls, work=windows_of)

    spec = model.Spec.of(Config(), text.vocab.size)
    net = model.Model(spec, spec.init(jax.random.key(0)))
    settings = sample.Settings((r.TEMPERATURE,), r.SAMPLE_CHARS)
    keys = itertools.count()
    sampled = time_calls(lambda: sample.generate(
        net, r.prime(text.ids), jax.random.key(next(keys)), settings, mode="stateful",
        maxlen=cfg.maxlen), 1)  # fmt: skip
    r.report(
        train_s=trained.seconds[0], steps=calls * cfg.steps_per_call, windows=trained.work[0],
        first_s=trained.first_s, sample_s=sampled.seconds[0],
        train=f"charjax-train's loop: jitted chunks of {cfg.steps_per_call} steps on "
        f"{len(jax.devices())} {jax.devices()[0].platform} device(s)",
        sample="charjax-sample: 400 stateful steps in one jitted call (lax.scan)",
        packages=versions("jax", "jaxlib", "flax", "optax"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
