"""A whole training run: corpus, fresh start or resume, epochs, per-epoch samples, checkpoints.

`train_run(cfg, checkpoint_dir, resume=...)` is what `charjax-train` calls; the math lives in
`train`, `sample` and `data`, the side effects (printing, files) only here.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charjax import checkpoint, data, parallel, sample, train
from charjax.config import MATH_FIELDS, Config
from charjax.errors import CharjaxError, Interrupted
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


@dataclass
class _Start:
    cfg: Config
    corpus: Corpus
    state: train.TrainState
    epoch: int  # the first epoch to train
    position: train.EpochPosition  # where in that epoch (non-zero after a Ctrl-C)


def _fresh(cfg: Config, ckpts: checkpoint.Checkpoints) -> _Start:
    have = ckpts.epochs()
    if have or ckpts.partial_meta():
        held = f"epochs {have[0]}..{have[-1]}" if have else "an interrupted epoch"
        raise CharjaxError(
            f"{ckpts.directory} already holds checkpoints ({held}); pass --resume to continue "
            "that run, or choose another --checkpoint-dir"
        )
    if cfg.text != data.NIETZSCHE:  # stored absolute, so --resume works from any directory
        cfg = cfg.replace(text=str(Path(cfg.text).expanduser().absolute()))
    corpus = load_corpus(cfg)
    state = train.init_state(run_keys(cfg.seed)[0], corpus.vocab.size, cfg)
    return _Start(cfg, corpus, state, 1, train.EpochPosition())


def _resume(given: dict, ckpts: checkpoint.Checkpoints, log, sharding) -> _Start:
    """Continue from the latest complete epoch, or from inside the epoch after it."""
    have = ckpts.epochs()
    partial = ckpts.partial_meta()
    if partial and partial["epoch"] != (have[-1] if have else 0) + 1:
        partial = None  # older than the latest complete epoch: superseded
    if not have and not partial:
        raise CharjaxError(f"nothing to resume: no checkpoints in {ckpts.directory}")
    meta = partial or ckpts.meta()
    saved = checkpoint.config_of(meta)
    if partial and given.get("steps_per_call", saved.steps_per_call) != saved.steps_per_call:
        raise CharjaxError(
            f"the interrupted epoch {partial['epoch']} was split into chunks of "
            f"--steps-per-call {saved.steps_per_call}; resume it without --steps-per-call "
            "(change it after that epoch)"
        )
    cfg = merge_resumed(saved, given).check()
    corpus = load_corpus(cfg)
    if corpus.sha256 != meta["corpus_sha256"] or corpus.vocab.chars != meta["vocab"]:
        raise CharjaxError(
            f"the corpus {cfg.text} is not the one the checkpoint in {ckpts.directory} was "
            "trained on (different file or vocabulary); pass the original with --text"
        )
    recorded = [m["epoch"] for m in read_metrics(ckpts.directory)]
    if have and have[-1] not in recorded and parallel.is_primary():
        append_metrics(ckpts.directory, ckpts.meta()["metrics"])  # died before writing it
    like = jax.eval_shape(lambda: train.init_state(jax.random.key(0), corpus.vocab.size, cfg))
    changed = [
        f"--{name.replace('_', '-')} {given[name]} (was {getattr(saved, name)})"
        for name in sorted(given)
        if name != "text" and given[name] != getattr(saved, name)
    ]
    if partial:
        position = train.EpochPosition(*partial["position"])
        log(f"resuming inside epoch {partial['epoch']} after {position.windows:,} windows")
        for line in changed:
            log(f"  using {line}")
        state = ckpts.restore_partial(like, sharding)
        return _Start(cfg, corpus, state, partial["epoch"], position)
    log(f"resuming from epoch {meta['epoch']} in {ckpts.directory}")
    for line in changed:
        log(f"  using {line}")
    state = ckpts.restore(like, meta["epoch"], sharding)
    return _Start(cfg, corpus, state, meta["epoch"] + 1, train.EpochPosition())


class _StopOnCtrlC:
    """First Ctrl-C (or SIGTERM): finish the current chunk, save, stop. Second: quit at once,
    except while a checkpoint is being written, which always completes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, log):
        self.log, self.requested, self.saving, self._previous = log, False, False, {}

    def __enter__(self):
        # Several processes would each see their own Ctrl-C; there it keeps its default meaning.
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested and not self.saving:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested = True
            self.log(
                "stopping after the current batches to save a checkpoint "
                "(Ctrl-C again to quit without saving the epoch in progress)"
            )

    @contextlib.contextmanager
    def protect(self):
        """A block (a checkpoint write) that a second Ctrl-C does not cut short."""
        self.saving = True
        try:
            yield
        finally:
            self.saving = False

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def _all_finite(tree) -> bool:
    """Whether every float in the pytree (parameters and optimizer state) is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return all(bool(jnp.isfinite(x).all()) for x in leaves)


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
            begin = _resume(given or {}, ckpts, report.log, parallel.replicated(mesh))
        else:
            begin = _fresh(cfg, ckpts)
        cfg, corpus, state = begin.cfg, begin.corpus, begin.state
        if cfg.keep != ckpts.keep:  # the run's own --keep, restored from its checkpoint
            ckpts.close()
            ckpts = checkpoint.Checkpoints(directory, keep=cfg.keep)
        _, data_key, sample_key = run_keys(cfg.seed)
        ids = parallel.put(corpus.ids, parallel.replicated(mesh))
        starts = jnp.asarray(data.window_starts(len(corpus.ids), cfg.maxlen, cfg.step))
        batches = -(-len(starts) // cfg.batch_size)
        prime = corpus.text[: cfg.maxlen]  # stored so sampling needs no corpus

        def meta(epoch: int, metrics: dict) -> dict:
            return checkpoint.make_meta(
                cfg, corpus.vocab.chars, corpus.sha256, epoch, metrics, prime
            )

        report.log(
            f"corpus: {len(corpus.ids):,} chars, {corpus.vocab.size} distinct, "
            f"{len(starts):,} windows; epochs {begin.epoch}..{cfg.epochs} on {mesh.size} "
            f"{mesh.devices.flat[0].platform} device(s); checkpoints in {ckpts.directory}"
        )
        resume_hint = f"charjax-train --resume --checkpoint-dir {ckpts.directory}"
        history = []
        with _StopOnCtrlC(report.log) as ctrl_c:
            for epoch in range(begin.epoch, cfg.epochs + 1):
                report.epoch_started(epoch, cfg.epochs)
                t0 = time.perf_counter()

                def on_chunk(done, total, windows, loss, t0=t0):
                    done_batches = min(done * cfg.steps_per_call, batches)
                    report.chunk_done(
                        done_batches, batches, windows, loss, time.perf_counter() - t0
                    )

                position = begin.position if epoch == begin.epoch else train.EpochPosition()
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
                if not (np.isfinite(loss) and _all_finite(state)):
                    report.epoch_finished(None, cfg.epochs)
                    raise CharjaxError(
                        f"epoch {epoch}: the loss became {loss:.4g} (state not finite); nothing "
                        "was saved for this epoch. Start a new run with a lower --learning-rate "
                        "in another --checkpoint-dir (a resume would repeat the same numbers)"
                    )
                metrics = {
                    "epoch": epoch,
                    "loss": loss,
                    "seconds": seconds,
                    "windows_per_s": (len(starts) - position.windows) / seconds,
                }
                if cfg.temperatures and cfg.sample_length:
                    params = parallel.local(state.params)
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
        return state, history
    finally:
        report.close()
        if ckpts is not None:
            ckpts.close()
        if lock is not None:
            lock.close()
