"""A whole training run: start or resume, epochs, per-epoch samples, checkpoints, metrics.

`train_run(cfg, checkpoint_dir, resume=...)` is what `charjax-train` calls; the math lives in
`train`, `sample` and `data`, where a run starts in `start`, the side effects (printing, files)
only here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charjax import checkpoint, parallel, sample, score, start, train
from charjax.config import Config
from charjax.errors import CharjaxError, Interrupted
from charjax.report import Reporter, append_metrics, read_metrics
from charjax.start import Corpus, load_corpus, run_keys
from charjax.stop import StopRequest

__all__ = ["Corpus", "epoch_samples", "load_corpus", "run_keys", "train_run"]

MAX_CUTS = 8  # divergences in a row (each halving the learning rate) before a process gives up


def epoch_samples(params, corpus: Corpus, sample_key, epoch: int, cfg: Config) -> dict:
    """The original's per-epoch show: a random maxlen-char seed, then text per temperature."""
    seed_key, gen_key = jax.random.split(jax.random.fold_in(sample_key, epoch))
    offset = int(jax.random.randint(seed_key, (), 0, len(corpus.ids) - cfg.maxlen))
    prime = corpus.ids[offset : offset + cfg.maxlen]
    out = sample.generate(
        params,
        prime,
        gen_key,
        list(cfg.temperatures),
        length=cfg.sample_length,
        maxlen=cfg.maxlen,
        mode=score.default_mode(cfg),
    )
    texts = {
        f"{t:g}": corpus.vocab.decode(row) for t, row in zip(cfg.temperatures, out, strict=False)
    }
    return {"seed": corpus.vocab.decode(prime), "texts": texts}


def _all_finite(tree) -> bool:
    """Whether every float in the pytree (parameters and optimizer state) is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return all(bool(jnp.isfinite(x).all()) for x in leaves)


def divergence(loss: float, state, best: float, guard: float) -> str | None:
    """Why an epoch's result must not be kept (None: it may): a non-finite loss or state, or,
    with the guard on, a loss above `guard` x the best epoch's."""
    if not np.isfinite(loss):
        return f"the loss became {loss:.4g}"
    if not _all_finite(state):
        return "the parameters became non-finite"
    if guard > 0 and np.isfinite(best) and loss > guard * best:
        return f"the loss {loss:.4f} is above {guard:g} x the best epoch's {best:.4f}"
    return None


def train_run(
    cfg: Config,
    checkpoint_dir: str | Path,
    *,
    resume: bool = False,
    given: dict | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> tuple[train.TrainState, list[dict]]:
    """Train epochs up to `cfg.epochs`, saving a checkpoint after each -> (state, metrics list).

    `given` holds the flags the user set explicitly; on resume they are checked against and
    applied to the saved config. Lines go to `log` (default: stdout); `progress` turns the live
    progress bar on or off (default: on when stdout is a terminal and `log` is not given).
    Ctrl-C saves the epoch so far and raises `Interrupted`.
    """
    cfg.check()
    primary = parallel.is_primary()
    if not primary:  # in a multi-process run only process 0 talks
        log, progress = (lambda line: None), False
    report = Reporter(progress=progress, log=log)
    directory = Path(checkpoint_dir).expanduser().absolute()
    lock = ckpts = None
    mesh = parallel.data_mesh()
    try:
        lock = checkpoint.lock_directory(directory) if primary else None
        ckpts = checkpoint.Checkpoints(directory, keep=cfg.keep)
        if resume:
            begin = start.resume(given or {}, ckpts, report.log, parallel.replicated(mesh))
        else:
            begin = start.fresh(cfg, ckpts)
        cfg, corpus, state = begin.cfg, begin.corpus, begin.state
        if cfg.keep != ckpts.keep:  # the run's own --keep, restored from its checkpoint
            ckpts.close()
            ckpts = checkpoint.Checkpoints(directory, keep=cfg.keep)
        init_key, data_key, sample_key, dropout_key = run_keys(cfg.seed)
        ids = parallel.put(corpus.ids, parallel.replicated(mesh))
        split = start.split_of(corpus, cfg)
        held_out = corpus.ids[split:] if split < len(corpus.ids) else None
        starts = train.epoch_starts(split, cfg)
        if len(starts) == 0:  # only --carry-state can get here: split_of checked the rest
            raise CharjaxError(
                f"{split:,} training chars cannot be cut into --batch-size {cfg.batch_size} "
                f"streams of at least --maxlen {cfg.maxlen} chars each; use a smaller --batch-size"
            )
        starts = jnp.asarray(starts)
        batches = -(-len(starts) // cfg.batch_size)
        context = train.StepContext(dropout_key, jnp.int32(cfg.epochs * batches))
        prime = corpus.text[: cfg.maxlen]  # stored so sampling needs no corpus
        earlier = [m["loss"] for m in read_metrics(ckpts.directory) if m["epoch"] < begin.epoch]
        best = min(earlier, default=float("inf"))

        def meta(epoch: int, metrics: dict) -> dict:
            return checkpoint.make_meta(
                cfg, corpus.vocab.chars, corpus.sha256, epoch, metrics, prime
            )

        def last_good():
            """The state of the latest saved epoch, or the initial one before any."""
            have = ckpts.epochs()
            if not have:
                return train.init_state(init_key, corpus.vocab.size, cfg), "the initial state"
            like = train.state_shape(corpus.vocab.size, cfg)
            restored = ckpts.restore(like, have[-1], parallel.replicated(mesh))
            return restored, f"epoch {have[-1]}"

        held = f", {len(held_out):,} held out" if held_out is not None else ""
        report.log(
            f"corpus: {len(corpus.ids):,} chars{held}, {corpus.vocab.size} distinct, "
            f"{len(starts):,} windows; epochs {begin.epoch}..{cfg.epochs} on {mesh.size} "
            f"{mesh.devices.flat[0].platform} device(s); checkpoints in {ckpts.directory}"
        )
        resume_hint = f"charjax-train --resume --checkpoint-dir {ckpts.directory}"
        history = []
        epoch, position, cuts = begin.epoch, begin.position, 0
        with StopRequest(report.log) as ctrl_c:
            while epoch <= cfg.epochs:
                report.epoch_started(epoch, cfg.epochs)
                t0 = time.perf_counter()

                def on_chunk(done, total, windows, loss, t0=t0):
                    done_batches = min(done * cfg.steps_per_call, batches)
                    report.chunk_done(
                        done_batches, batches, windows, loss, time.perf_counter() - t0
                    )

                try:
                    state, loss = train.train_epoch(
                        state,
                        ids,
                        starts,
                        data_key,
                        epoch,
                        cfg,
                        mesh,
                        on_chunk=on_chunk,
                        start=position,
                        stop=lambda: ctrl_c.requested,
                        context=context,
                    )
                except train.EpochInterrupted as stopped:
                    report.epoch_finished(None, cfg.epochs)
                    if not _all_finite(stopped.state):
                        raise Interrupted(
                            f"interrupted in epoch {epoch}; its parameters were not finite, so "
                            f"nothing was saved for it. Resume from the last epoch: {resume_hint}"
                        ) from None
                    pos = stopped.position
                    with ctrl_c.protect():
                        ckpts.save_partial(
                            int(stopped.state.step),
                            stopped.state,
                            {**meta(epoch, {}), "position": pos},
                        )
                    raise Interrupted(
                        f"interrupted: saved epoch {epoch} after {pos.windows:,} of "
                        f"{len(starts):,} windows. Continue with: {resume_hint}"
                    ) from None
                seconds = time.perf_counter() - t0
                trained = len(starts) - position.windows
                position = train.EpochPosition()
                problem = divergence(loss, state, best, cfg.guard)
                if problem is not None:
                    report.epoch_finished(None, cfg.epochs)
                    if cfg.guard == 0:
                        raise CharjaxError(
                            f"epoch {epoch}: {problem}; nothing was saved for this epoch. Start "
                            "a new run with a lower --learning-rate in another --checkpoint-dir "
                            "(or keep the divergence guard on: --guard 1.2)"
                        )
                    if cuts == MAX_CUTS:
                        raise CharjaxError(
                            f"epoch {epoch}: {problem}, still after {MAX_CUTS} restarts with "
                            "the learning rate halved each time; nothing was saved for it. Start "
                            "a new run with a much lower --learning-rate"
                        )
                    scale = float(state.lr_scale) / 2
                    state, origin = last_good()
                    if primary:  # an older interruption of this epoch is superseded
                        ckpts.clear_partial()
                    state = state._replace(lr_scale=jnp.asarray(scale, jnp.float32))
                    cuts += 1
                    report.log(
                        f"epoch {epoch}: {problem}. Divergence guard: restored {origin}, "
                        f"learning rate x{scale:g} (now {cfg.learning_rate * scale:.4g}); "
                        f"training epoch {epoch} again"
                    )
                    continue
                cuts, best = 0, min(best, loss)
                metrics = {
                    "epoch": epoch,
                    "loss": loss,
                    "seconds": seconds,
                    "windows_per_s": trained / seconds,
                    "lr_scale": float(state.lr_scale),
                }
                params = parallel.local(state.params)
                if held_out is not None:
                    val = score.validate(params, held_out, cfg)
                    metrics["val_loss"] = val.nats_per_char
                    metrics["val_bits"] = val.bits_per_char
                if cfg.temperatures and cfg.sample_length:
                    metrics["samples"] = epoch_samples(params, corpus, sample_key, epoch, cfg)
                report.epoch_finished(metrics, cfg.epochs)
                with ctrl_c.protect():
                    ckpts.save(epoch, state, meta(epoch, metrics))
                    if primary:
                        ckpts.clear_partial()
                        append_metrics(ckpts.directory, metrics)
                history.append(metrics)
                if ctrl_c.requested and epoch < cfg.epochs:
                    raise Interrupted(
                        f"interrupted after epoch {epoch}. Continue with: {resume_hint}"
                    )
                epoch += 1
        return state, history
    finally:
        report.close()
        if ckpts is not None:
            ckpts.close()
        if lock is not None:
            lock.close()
