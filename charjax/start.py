"""Where a run starts: its corpus and keys, then a fresh state or the checkpointed one.

`fresh` begins at epoch 1; `resume` continues after the latest complete epoch, or inside the
epoch an interruption saved to `partial/`, with the saved config and the user's explicit flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from charjax import checkpoint, data, parallel, score, train
from charjax.config import MATH_FIELDS, Config
from charjax.errors import CharjaxError
from charjax.report import append_metrics, read_metrics


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


def split_of(corpus: Corpus, cfg: Config) -> int:
    """Where the held-out tail begins (len(ids) without one); errors if a part is too short."""
    n = len(corpus.ids)
    split = data.split_point(n, cfg.val_fraction)
    if split <= cfg.maxlen:
        raise CharjaxError(
            f"--val-fraction {cfg.val_fraction:g} leaves {split} chars for training, not more "
            f"than --maxlen {cfg.maxlen}; use a longer text or a smaller --val-fraction"
        )
    need = cfg.maxlen + 1 if score.default_mode(cfg) == "window" else 2
    if cfg.val_fraction > 0 and n - split < need:
        raise CharjaxError(
            f"--val-fraction {cfg.val_fraction:g} holds out {n - split} chars, fewer than the "
            f"{need} validation needs; raise it, or pass --val-fraction 0 to skip validation"
        )
    return split


def saved_corpus(cfg: Config, meta: dict, directory) -> Corpus:
    """The corpus a checkpoint was trained on, refusing a changed file or vocabulary."""
    corpus = load_corpus(cfg)
    if corpus.sha256 != meta["corpus_sha256"] or corpus.vocab.chars != meta["vocab"]:
        raise CharjaxError(
            f"the corpus {cfg.text} is not the one the checkpoint in {directory} was "
            "trained on (different file or vocabulary); pass the original with --text"
        )
    return corpus


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(init, data, sample, dropout) keys of a run; per-epoch keys are `fold_in(key, epoch)`,
    per-step dropout keys `fold_in(key, step)`."""
    init_key, data_key, sample_key, dropout_key = jax.random.split(jax.random.key(seed), 4)
    return init_key, data_key, sample_key, dropout_key


def merge_resumed(saved: Config, given: dict) -> Config:
    """The saved config with the explicitly given flags applied; math-changing conflicts raise."""
    conflicts = [
        f"--{k.replace('_', '-')} {v} (checkpoint has {getattr(saved, k)})"
        for k, v in given.items()
        if k in MATH_FIELDS and k != "text" and v != getattr(saved, k)
    ]
    if saved.schedule == "cosine" and given.get("epochs", saved.epochs) != saved.epochs:
        conflicts.append(
            f"--epochs {given['epochs']} (checkpoint has {saved.epochs}, over which its cosine "
            "schedule decays)"
        )
    if conflicts:
        raise CharjaxError(
            "--resume with settings that differ from the checkpoint: "
            + "; ".join(conflicts)
            + "; drop these flags or start a new run in another --checkpoint-dir"
        )
    return saved.replace(**given)


@dataclass
class Start:
    cfg: Config
    corpus: Corpus
    state: train.TrainState
    epoch: int  # the first epoch to train
    position: train.EpochPosition  # where in that epoch (non-zero after a Ctrl-C)


def fresh(cfg: Config, ckpts: checkpoint.Checkpoints) -> Start:
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
    split_of(corpus, cfg)
    state = train.init_state(run_keys(cfg.seed)[0], corpus.vocab.size, cfg)
    return Start(cfg, corpus, state, 1, train.EpochPosition())


def resume(given: dict, ckpts: checkpoint.Checkpoints, log, sharding) -> Start:
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
    corpus = saved_corpus(cfg, meta, ckpts.directory)
    recorded = [m["epoch"] for m in read_metrics(ckpts.directory)]
    if have and have[-1] not in recorded and parallel.is_primary():
        append_metrics(ckpts.directory, ckpts.meta()["metrics"])  # died before writing it
    like = train.state_shape(corpus.vocab.size, cfg)
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
        return Start(cfg, corpus, state, partial["epoch"], position)
    log(f"resuming from epoch {meta['epoch']} in {ckpts.directory}")
    for line in changed:
        log(f"  using {line}")
    state = ckpts.restore(like, meta["epoch"], sharding)
    return Start(cfg, corpus, state, meta["epoch"] + 1, train.EpochPosition())
