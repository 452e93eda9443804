"""charjax's side of `charjax-bench --peers`: the original recipe's training as `charjax-train`
runs it (jitted chunks of 10 steps on the host's devices), and `charjax-sample`'s stateful
400-char loop (one jitted call), in a process of its own like each peer.
`python -m benchmarks.peers.charjax_peer --steps N`."""

from __future__ import annotations

from benchmarks.peers import recipe as r


def main() -> None:
    args = r.arguments("charjax_peer")
    from charjax import parallel

    parallel.request_cpu_devices()  # as charjax-train does, before jax starts
    parallel.tune_host_malloc()
    import itertools

    import jax

    from benchmarks.measure import default_corpus, training, windows_of
    from charjax import model, sample, step
    from charjax.config import Config

    cfg, text = default_corpus()
    assert (cfg.maxlen, cfg.step, cfg.hidden, cfg.batch_size) == (r.MAXLEN, r.STEP, r.HIDDEN,
                                                                   r.BATCH)  # fmt: skip
    state = step.init_state(jax.random.key(0), text.vocab.size, cfg)
    chunks = training(cfg, text.ids, len(text.ids), state, jax.random.key(1),
                      parallel.data_mesh())  # fmt: skip
    calls = max(1, args.steps // cfg.steps_per_call)
    t0 = r.clock()
    for _ in range(max(1, r.WARMUP_STEPS // cfg.steps_per_call)):
        jax.block_until_ready(next(chunks))
    t1 = r.clock()
    windows = sum(windows_of(jax.block_until_ready(next(chunks))) for _ in range(calls))
    train_s = r.clock() - t1

    spec = model.Spec.of(Config(), text.vocab.size)
    net = model.Model(spec, spec.init(jax.random.key(0)))
    settings = sample.Settings((r.TEMPERATURE,), r.SAMPLE_CHARS)
    keys = itertools.count()

    def sample_text():
        out = sample.generate(net, r.prime(text.ids), jax.random.key(next(keys)), settings,
                              mode="stateful", maxlen=cfg.maxlen)  # fmt: skip
        return jax.block_until_ready(out)

    sample_text()  # compiles
    t2 = r.clock()
    sample_text()
    sample_s = r.clock() - t2
    r.report(
        train_s=train_s, steps=calls * cfg.steps_per_call, windows=windows, first_s=t1 - t0,
        sample_s=sample_s,
        train=f"charjax-train's loop: jitted chunks of {cfg.steps_per_call} steps on "
        f"{len(jax.devices())} {jax.devices()[0].platform} device(s)",
        sample="charjax-sample: 400 stateful steps in one jitted call (lax.scan)",
        packages=r.versions("jax", "jaxlib", "flax", "optax"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
