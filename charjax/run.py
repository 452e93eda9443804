"""A training run, set up once: its config, corpus and split, keys, training windows, state and
where it starts (`Run`). `fresh` begins at epoch 1; `resume` continues after the latest complete
epoch, or inside the epoch an interruption saved, with the saved config and the user's flags.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from charjax import corpus as corpora
from charjax import model, objective, parallel, step
from charjax.config import MATH_FIELDS, Config, flag, shown, typed
from charjax.epoch import Position
from charjax.errors import CharjaxError
from charjax.integrity import Damaged
from charjax.run_dir import Meta, RunDir


class Keys(NamedTuple):
    """Every random choice of a run: per-epoch keys are `fold_in(key, epoch)`, per-step dropout
    keys `fold_in(dropout, step)`. Nothing random is stored, so a resume repeats a run exactly."""

    init: jax.Array
    data: jax.Array
    sample: jax.Array
    dropout: jax.Array


def run_keys(seed: int) -> Keys:
    return Keys(*jax.random.split(jax.random.key(seed), 4))


@dataclass(frozen=True)
class Run:
    """What a run was set up with; the training loop keeps its own state (`runner.Loop`)."""

    cfg: Config
    corpus: corpora.Corpus
    split: int  # ids [0, split) train; [split, n) are held out
    keys: Keys
    windows: int  # training windows per epoch (`objective.windows`)
    state: step.TrainState  # the state it starts from
    epoch: int  # the first epoch to train
    position: Position  # where in that epoch (not at its start after a Ctrl-C)

    @property
    def held_out(self):
        """The held-out ids [n - split] (a view), or None without validation."""
        return self.corpus.ids[self.split :] if self.split < len(self.corpus.ids) else None

    @functools.cached_property
    def eval_ids(self):
        """What --eval-every scores: `eval_chars` held-out ids (at least one window), a slice
        of the tail at an offset drawn from the sample key (epoch 0's, which samples never
        use), the same all run long. None without validation."""
        tail = self.held_out
        if tail is None:
            return None
        size = min(len(tail), max(self.cfg.eval_chars, self.objective.validation_chars))
        key = jax.random.fold_in(self.keys.sample, 0)
        offset = int(jax.random.randint(key, (), 0, len(tail) - size + 1))
        return tail[offset : offset + size]

    @property
    def objective(self) -> objective.Objective:
        return objective.of(self.cfg)

    @functools.cached_property
    def spec(self) -> model.Spec:
        """The run's model: its Config's over the corpus's vocabulary."""
        return model.Spec.of(self.cfg, self.corpus.vocab.size)

    def bind(self, params: dict) -> model.Model:
        """The run's model bound to `params` (validation, samples)."""
        return model.Model(self.spec, params)

    @property
    def context(self) -> step.StepContext:
        return step_context(self.cfg, self.keys.dropout, self.windows)

    def initial_state(self) -> step.TrainState:
        return step.init_state(self.keys.init, self.corpus.vocab.size, self.cfg)

    def state_shape(self) -> step.TrainState:
        """Shapes and dtypes of the run's state (what its checkpoints restore into)."""
        return step.state_shape(self.corpus.vocab.size, self.cfg)

    def meta(self, epoch: int, metrics: dict | None = None, position=None) -> Meta:
        """The record saved with a checkpoint; the prime is stored so sampling needs no corpus."""
        c = self.corpus
        if position is not None:  # an interrupted epoch: its size, to tell how far it got
            metrics = {"epoch_windows": self.windows, **(metrics or {})}
        return Meta(self.cfg, c.vocab.chars, c.sha256, c.prime, epoch, metrics or {}, position)


def step_context(cfg: Config, dropout_key: jax.Array, windows: int) -> step.StepContext:
    """The train step's per-run inputs: the dropout key and the run's optimizer steps (its
    epochs of `windows` training windows, for the learning-rate schedule)."""
    return step.StepContext(dropout_key, jnp.int32(cfg.epochs * -(-windows // cfg.batch_size)))


def _build(cfg: Config, corpus: corpora.Corpus, state, epoch: int, position: Position) -> Run:
    split = corpora.split(corpus, cfg)
    windows = objective.of(cfg).windows(split)
    if windows == 0:  # only carried streams can get here: `split` checked the rest
        raise CharjaxError(
            f"{split:,} training chars cannot be cut into --batch-size {cfg.batch_size} "
            f"streams of at least --maxlen {cfg.maxlen} chars each; use a smaller --batch-size"
        )
    keys = run_keys(cfg.seed)
    if state is None:
        state = step.init_state(keys.init, corpus.vocab.size, cfg)
    return Run(cfg, corpus, split, keys, windows, state, epoch, position)


def fresh(cfg: Config, folder: RunDir) -> Run:
    have = folder.epochs()
    if have or folder.checkpoints.partial_meta():
        held = f"epochs {have[0]}..{have[-1]}" if have else "an interrupted epoch"
        raise CharjaxError(
            f"{folder.directory} already holds checkpoints ({held}); pass --resume to continue "
            "that run, or choose another --checkpoint-dir"
        )
    cfg = cfg.replace(text=corpora.absolute(cfg.text))
    return _build(cfg, corpora.load(cfg), None, 1, Position())


def merge_resumed(saved: Config, given: dict) -> Config:
    """The saved config with the explicitly given flags applied; math-changing conflicts raise."""
    conflicts = [
        f"{_as_typed(k, v)} (checkpoint has {_as_typed(k, getattr(saved, k), plain=True)})"
        for k, v in given.items()
        if k in MATH_FIELDS and k != "text" and v != getattr(saved, k)
    ]
    if saved.schedule != "constant" and given.get("epochs", saved.epochs) != saved.epochs:
        conflicts.append(
            f"--epochs {given['epochs']} (checkpoint has {saved.epochs}, over which its "
            f"{saved.schedule} schedule decays)"
        )
    if conflicts:
        raise CharjaxError(
            "--resume with settings that differ from the checkpoint: "
            + "; ".join(conflicts)
            + "; drop these flags or start a new run in another --checkpoint-dir"
        )
    return saved.replace(**given)


def _as_typed(name: str, value, plain: bool = False) -> str:
    """`--hidden 32` (with `plain`: `32`); a switch or a repeatable flag as typed whole
    (`--keep-case`, `--no-carry-state`, `--glob '*.py'`)."""
    if isinstance(value, bool) or Config.__dataclass_fields__[name].metadata.get("repeat"):
        return typed(name, value)
    return shown(value) if plain else f"{flag(name)} {shown(value)}"


def resume(given: dict, folder: RunDir, log, sharding, note=None) -> Run:
    """Continue from the latest complete epoch, or from inside the epoch after it; a damaged
    checkpoint is named (by `note`, a remark beside the run's log: default `log`), moved
    aside, and the newest intact one before it is used."""
    meta, state = _newest_intact(folder, given, note or log, sharding)
    partial = meta if meta.position is not None else None
    saved = meta.cfg
    if partial and given.get("steps_per_call", saved.steps_per_call) != saved.steps_per_call:
        raise CharjaxError(
            f"the interrupted epoch {partial.epoch} was split into chunks of "
            f"--steps-per-call {saved.steps_per_call}; resume it without --steps-per-call "
            "(change it after that epoch)"
        )
    if given.get("minutes"):
        raise CharjaxError(
            f"--minutes chooses the epoch count of a new run; the run in {folder.directory} "
            f"keeps its --epochs {saved.epochs} (drop --minutes)"
        )
    cfg = merge_resumed(saved, given).check()
    if meta.format < 3 and not objective.of(cfg).carried:
        raise CharjaxError(
            f"the run in {folder.directory} was trained by an older charjax (checkpoint format "
            f"{meta.format}) that shuffled windows in another order, so resuming would not "
            "repeat it; sample or score from it as it is, or train again in a new --checkpoint-dir"
        )
    corpus = corpora.load_saved(cfg, meta.corpus_sha256, meta.vocab, folder.directory)
    folder.repair_metrics()
    if partial:
        log(f"resuming inside epoch {partial.epoch} after {partial.position.windows:,} windows")
    else:
        log(f"resuming from epoch {meta.epoch} in {folder.directory}")
    for name in sorted(given):
        if name != "text" and given[name] != getattr(saved, name):
            was = _as_typed(name, getattr(saved, name), plain=True)
            log(f"  using {_as_typed(name, given[name])} (was {was})")
    if partial:
        return _build(cfg, corpus, state, partial.epoch, partial.position)
    return _build(cfg, corpus, state, meta.epoch + 1, Position())


def _newest_intact(folder: RunDir, given: dict, note, sharding):
    """(record, state) of the newest checkpoint that reads back whole: the interrupted epoch,
    then the epochs from the latest down. Each damaged one is named in a line and moved aside
    (it would be written again); none intact is one line."""
    damaged = 0
    for epoch in [None, *reversed(folder.epochs())]:  # None: the interrupted epoch
        try:
            meta = folder.partial() if epoch is None else folder.meta(epoch)
            if meta is None:
                continue
            like = step.state_shape(len(meta.vocab), merge_resumed(meta.cfg, given))
            if epoch is None:
                return meta, folder.restore_partial(like, sharding)
            return meta, folder.restore(like, epoch, sharding)
        except Damaged as e:
            # every process read it (orbax's reads are collective) before process 0 moves it,
            # and it is gone for all before any lists the epochs again
            parallel.barrier(f"read damaged {epoch}")
            aside = folder.set_aside(epoch)
            parallel.barrier(f"set aside {epoch}")
            note(f"{e}; moved it to {aside.name} and trying the checkpoint before it")
            damaged += 1
    if not damaged:  # at most a save that never finished
        raise CharjaxError(
            f"nothing to resume: no checkpoints in {folder.directory}; drop --resume to start "
            "a run there"
        )
    raise CharjaxError(
        f"no intact checkpoint left in {folder.directory} to resume from (the damaged ones "
        "were moved aside); train again in a new --checkpoint-dir"
    )
