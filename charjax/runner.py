"""A whole training run: corpus, fresh start or resume, epochs, per-epoch samples, checkpoints.

`train_run(cfg, checkpoint_dir, resume=...)` is what `charjax-train` calls; the math lives in
`train`, `sample` and `data`, the side effects (printing, files) only here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charjax import checkpoint, data, parallel, sample, train
from charjax.config import MATH_FIELDS, Config
from charjax.errors import CharjaxError
from charjax.report import Reporter, append_metrics, read_metrics


@dataclass(frozen=True)
class Corpus:
    text: str
    vocab: data.Vocab
    ids: np.ndarray  # int32[n]
    sha256: str  # of the file as read from disk


def load_corpus(cfg: Config) -> Corpus:
    """Resolve, read and encode the corpus; error if it cannot give a single window."""
    path = data.resolve_corpus(cfg.text)
    text = data.read_text(path, max_chars=cfg.max_chars, lower=cfg.lower)
    if len(text) < cfg.maxlen + 1:
        raise CharjaxError(
            f"{path} gives {len(text)} chars, fewer than --maxlen + 1 = {cfg.maxlen + 1}; use a "
            "longer text or a smaller --maxlen"
        )
    vocab = data.Vocab.from_text(text)
    return Corpus(text, vocab, vocab.encode(text), data.sha256_of(path))


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, data, sample) keys of a run; per-epoch keys are `fold_in(key, epoch)`."""
    init_key, data_key, sample_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, data_key, sample_key


def epoch_samples(params, corpus: Corpus, sample_key, epoch: int, cfg: Config) -> dict:
    """The original's per-epoch show: a random maxlen-char seed, then text per temperature."""
    seed_key, gen_key = jax.random.split(jax.random.fold_in(sample_key, epoch))
    start = int(jax.random.randint(seed_key, (), 0, len(corpus.ids) - cfg.maxlen))
    prime = corpus.ids[start : start + cfg.maxlen]
    out = sample.generate(
        params, prime, gen_key, list(cfg.temperatures), length=cfg.sample_length, maxlen=cfg.maxlen
    )
    texts = {
        f"{t:g}": corpus.vocab.decode(row) for t, row in zip(cfg.temperatures, out, strict=False)
    }
    return {"seed": corpus.vocab.decode(prime), "texts": texts}


def merge_resumed(saved: Config, given: dict) -> Config:
    """The saved config with the explicitly given flags applied; math-changing conflicts raise."""
    conflicts = [
        f"--{k.replace('_', '-')} {v} (checkpoint has {getattr(saved, k)})"
        for k, v in given.items()
        if k in MATH_FIELDS and k != "text" and v != getattr(saved, k)
    ]
    if conflicts:
        raise CharjaxError(
            "--resume with settings that differ from the checkpoint: "
            + "; ".join(conflicts)
            + "; drop these flags or start a new run in another --checkpoint-dir"
        )
    return saved.replace(**given)


def _start(cfg: Config, given: dict, ckpts: checkpoint.Checkpoints, resume: bool, log):
    """-> (cfg, corpus, state, first epoch to train)."""
    have = ckpts.epochs()
    if not resume:
        if have:
            raise CharjaxError(
                f"{ckpts.directory} already holds checkpoints (epochs {have[0]}..{have[-1]}); pass "
                "--resume to continue that run, or choose another --checkpoint-dir"
            )
        corpus = load_corpus(cfg)
        state = train.init_state(run_keys(cfg.seed)[0], corpus.vocab.size, cfg)
        return cfg, corpus, state, 1
    if not have:
        raise CharjaxError(f"nothing to resume: no checkpoints in {ckpts.directory}")
    meta = ckpts.meta()
    saved = checkpoint.config_of(meta)
    cfg = merge_resumed(saved, given).check()
    log(f"resuming from epoch {meta['epoch']} in {ckpts.directory}")
    for name in sorted(given):
        if name != "text" and given[name] != getattr(saved, name):
            log(f"  --{name.replace('_', '-')} {given[name]} replaces {getattr(saved, name)}")
    recorded = [m["epoch"] for m in read_metrics(ckpts.directory)]
    if meta["epoch"] not in recorded:  # the run died between checkpoint and metrics line
        append_metrics(ckpts.directory, meta["metrics"])
    corpus = load_corpus(cfg)
    if corpus.sha256 != meta["corpus_sha256"] or corpus.vocab.chars != meta["vocab"]:
        raise CharjaxError(
            f"the corpus {cfg.text} is not the one the checkpoint in {ckpts.directory} was "
            "trained on (different file or vocabulary); pass the original with --text"
        )
    like = jax.eval_shape(lambda: train.init_state(jax.random.key(0), corpus.vocab.size, cfg))
    return cfg, corpus, ckpts.restore(like, meta["epoch"]), meta["epoch"] + 1


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
    """
    cfg.check()
    report = Reporter(progress=progress, log=log)
    ckpts = checkpoint.Checkpoints(checkpoint_dir, keep=cfg.keep)
    try:
        cfg, corpus, state, first = _start(cfg, given or {}, ckpts, resume, report.log)
        _, data_key, sample_key = run_keys(cfg.seed)
        mesh = parallel.data_mesh()
        ids = jnp.asarray(corpus.ids)
        starts = jnp.asarray(data.window_starts(len(corpus.ids), cfg.maxlen, cfg.step))
        batches = -(-len(starts) // cfg.batch_size)
        prime = corpus.text[: cfg.maxlen]  # stored so sampling needs no corpus
        report.log(
            f"corpus: {len(corpus.ids):,} chars, {corpus.vocab.size} distinct, "
            f"{len(starts):,} windows; epochs {first}..{cfg.epochs} on {mesh.size} "
            f"{mesh.devices.flat[0].platform} device(s); checkpoints in {ckpts.directory}"
        )
        history = []
        for epoch in range(first, cfg.epochs + 1):
            report.epoch_started(epoch, cfg.epochs)
            t0 = time.perf_counter()

            def on_chunk(done, total, windows, loss, t0=t0):
                done_batches = min(done * cfg.steps_per_call, batches)
                report.chunk_done(done_batches, batches, windows, loss, time.perf_counter() - t0)

            state, loss = train.train_epoch(
                state, ids, starts, data_key, epoch, cfg, mesh, on_chunk=on_chunk
            )
            seconds = time.perf_counter() - t0
            if not np.isfinite(loss):
                raise CharjaxError(
                    f"epoch {epoch}: the loss became {loss}; nothing was saved for this epoch. "
                    "Lower --learning-rate and --resume from the last checkpoint"
                )
            metrics = {
                "epoch": epoch,
                "loss": loss,
                "seconds": seconds,
                "windows_per_s": len(starts) / seconds,
            }
            if cfg.temperatures and cfg.sample_length:
                metrics["samples"] = epoch_samples(state.params, corpus, sample_key, epoch, cfg)
            report.epoch_finished(metrics, cfg.epochs)
            meta = checkpoint.make_meta(cfg, corpus.vocab.chars, corpus.sha256, epoch, metrics, prime)
            ckpts.save(epoch, state, meta)
            append_metrics(ckpts.directory, metrics)
            history.append(metrics)
        return state, history
    finally:
        ckpts.close()
