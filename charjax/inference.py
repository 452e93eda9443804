"""Using a trained model: read one from a run's folder (parameters, recipe and vocabulary, no
optimizer), then sample text from it (`sample_texts`) or score a text under it (`score_text`).
What `charjax-sample` and `charjax-score` do, minus the printing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from charjax import corpus, evaluate, model, objective, sample, stream
from charjax import dynamic as dynamic_evaluation
from charjax.checkpoint import Checkpoints, closed_after
from charjax.errors import CharjaxError
from charjax.run_dir import BEST, Meta, RunDir


@dataclass(frozen=True)
class SavedModel:
    params: dict
    meta: Meta  # the recipe (meta.cfg), vocabulary, default prime, epoch and its metrics

    @property
    def vocab(self) -> corpus.Vocab:
        return corpus.Vocab(self.meta.vocab)

    @property
    def spec(self) -> model.Spec:
        """The model its recipe describes (`model.Spec.of` the stored Config)."""
        return model.Spec.of(self.meta.cfg, len(self.meta.vocab))

    @property
    def model(self) -> model.Model:
        """Its spec bound to its parameters: what sampling and scoring call."""
        return model.Model(self.spec, self.params)

    @property
    def interrupted(self) -> str | None:
        """None for a whole epoch; for the epoch an interruption saved (read when no whole
        epoch exists), how far it got: 'epoch 1, 65 % trained'."""
        position = self.meta.position
        if position is None:
            return None
        total = self.meta.metrics.get("epoch_windows")
        done = f"{100 * position.windows // total} %" if total else f"{position.windows:,} windows"
        return f"epoch {self.meta.epoch}, {done} trained"

    @property
    def reading(self) -> str:
        """How the model was trained to read: the default sampling and scoring mode."""
        return objective.of(self.meta.cfg).reading


def load(directory, epoch: int | None = None, best: bool = False) -> SavedModel:
    """The model saved at `epoch` (default: the latest; before any whole epoch, the one an
    interruption saved: `SavedModel.interrupted`) in a run's folder, or with `best` the epoch
    --keep-best kept (the lowest held-out loss). A run trained with --ema gives its averaged
    parameters (what its validation scored)."""
    if best:
        if epoch is not None:
            raise CharjaxError("--best and --epoch each name a checkpoint; pass one of them")
        where = Path(directory).expanduser().absolute()
        if not (where / BEST).is_dir():
            raise CharjaxError(
                f"{where} has no best/ checkpoint: the run was trained without --keep-best (or "
                "before its first held-out score); drop --best, or train with --keep-best"
            )
        folder = Checkpoints(where / BEST, keep=1, create=False)
        get_meta = lambda e: Meta.from_json(folder.meta(e))  # noqa: E731
    else:
        folder = RunDir(directory, create=False)
        get_meta = folder.meta
    with closed_after(folder):
        # a run interrupted in its first epoch: that epoch so far, until a whole one is saved
        partial = None if best or epoch is not None or folder.epochs() else folder.partial()
        meta = partial or get_meta(epoch)
        cfg = meta.cfg
        spec = model.Spec.of(cfg, len(meta.vocab))
        like = jax.eval_shape(lambda: spec.init(jax.random.key(0)))
        checkpoints = folder if best else folder.checkpoints
        part = "ema" if cfg.ema else "params"
        if partial is not None:
            return SavedModel(checkpoints.restore_partial_params(like, part), meta)
        return SavedModel(checkpoints.restore_params(like, meta.epoch, part), meta)


def check_temperatures(temperatures) -> None:
    if len(temperatures) == 0:
        raise CharjaxError("--temperature needs at least one number (0 = greedy)")


def check_stride(stride: int) -> None:
    if stride < 1:
        raise CharjaxError(f"--stride must be >= 1, got {stride}")


def encode_prime(saved: SavedModel, prime: str | None, unknown: str = "error"):
    """-> (ids, the prime as used, chars skipped): `prime` (default: the run's stored prime)
    lower-cased like the training text; chars outside the vocabulary raise, or with
    `unknown="skip"` are dropped."""
    prime = saved.meta.prime if prime is None else prime
    prime = prime.lower() if saved.meta.cfg.lower else prime
    ids, missing = saved.vocab.encode_known(prime)
    skipped = "".join(sorted(missing))
    if skipped and unknown == "error":
        raise CharjaxError(
            f"prime characters not in the vocabulary: {skipped!r}; remove them or pass "
            "--unknown skip"
        )
    return ids, (saved.vocab.decode(ids) if skipped else prime), skipped


def sample_texts(saved: SavedModel, prime_ids, *, seed: int, settings: sample.Settings,
                 mode=None) -> list[str]:  # fmt: skip
    """Texts after `prime_ids`, `settings.num_samples` per temperature in order (one jitted
    call); `mode`: the model's reading unless given."""
    ids = sample.generate(*_request(saved, prime_ids, seed, settings), **_how(saved, mode))
    return [saved.vocab.decode(row) for row in ids.reshape(-1, settings.length)]


def _request(saved, prime_ids, seed, settings: sample.Settings) -> tuple:
    """The arguments of `sample.generate` and `stream.stream` for a saved model."""
    temperatures = tuple(np.atleast_1d(settings.temperatures))
    check_temperatures(temperatures)
    settings = settings._replace(temperatures=temperatures)
    return saved.model, prime_ids, jax.random.key(seed), settings


def _how(saved, mode) -> dict:
    return dict(mode=mode or saved.reading, maxlen=saved.meta.cfg.maxlen)


def stream_texts(saved: SavedModel, prime_ids, *, seed: int, settings: sample.Settings,
                 mode=None, block: int = 256):  # fmt: skip
    """`sample_texts`, block by block: an iterator of the new chars of every text (a list, in
    the same order), each as soon as its block is made; joined, they are `sample_texts`'s
    texts, byte for byte."""
    args = _request(saved, prime_ids, seed, settings)
    blocks = stream.stream(*args, block=block, **_how(saved, mode))
    return ([saved.vocab.decode(row) for row in ids] for ids in blocks)


def score_text(saved: SavedModel, path, *, mode=None, stride=1, directory=None, progress=None,
               dynamic=None):  # fmt: skip
    """-> (record, unknown chars Counter): the score of the text file `path` (None: the run's
    held-out tail, after checking that the corpus is the one trained on) in `mode`;
    `progress(done, total)` hears how far it got (`evaluate.score_ids`). `dynamic` (rate,
    decay, rule "sgd" or "rms"; rate None: tuned; a `dynamic.Settings`): also the dynamic
    evaluation of the same chars (`dynamic.record`), under "dynamic" in the record, beside the
    static score."""
    check_stride(stride)
    cfg, mode = saved.meta.cfg, mode or saved.reading
    if path is None:
        if cfg.val_fraction == 0:
            raise CharjaxError(
                "this run held nothing out (--val-fraction 0); pass a text file to score"
            )
        text = corpus.load_saved(cfg, saved.meta.corpus_sha256, saved.meta.vocab, directory)
        ids, unknown = text.ids[corpus.split(text, cfg) :], Counter()
        source = f"held-out tail of {cfg.text} ({cfg.val_fraction:g})"
    else:
        text = corpus.read_text(corpus.resolve_corpus(path), lower=cfg.lower)
        ids, unknown = saved.vocab.encode_known(text)
        source = str(Path(path))
    result = evaluate.score_ids(
        saved.model, ids, mode=mode, maxlen=cfg.maxlen, stride=stride, progress=progress
    )
    record = {
        "text": source,
        "epoch": saved.meta.epoch,
        "mode": mode,
        "chars_scored": result.chars,
        "nats_per_char": result.nats_per_char,
        "bits_per_char": result.bits_per_char,
        "perplexity": result.perplexity,
        "unknown_chars": dict(unknown),
    }
    if dynamic is not None:
        known = text if path is None else None  # the training corpus, when already read
        record["dynamic"] = dynamic_evaluation.record(
            saved.model,
            ids,
            lambda: _training_ids(saved, known, directory),
            dynamic_evaluation.Settings(*dynamic),
            segment=cfg.maxlen,
            progress=progress,
        )
    return record, unknown


def _training_ids(saved: SavedModel, text, directory):
    """The ids `saved` was trained on: its corpus (`text`, or read again) up to the held-out
    tail."""
    cfg = saved.meta.cfg
    if text is None:
        text = corpus.load_saved(cfg, saved.meta.corpus_sha256, saved.meta.vocab, directory)
    return text.ids[: corpus.split(text, cfg)]
