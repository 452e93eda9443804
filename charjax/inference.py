"""Using a trained model: read one from a run's folder (parameters, recipe and vocabulary, no
optimizer), then sample text from it (`sample_texts`) or score a text under it (`score_text`).
What `charjax-sample` and `charjax-score` do, minus the printing.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jax

from charjax import corpus, evaluate, model, objective, sample, stream
from charjax.checkpoint import Checkpoints
from charjax.errors import CharjaxError
from charjax.run_dir import BEST, Meta, RunDir

RMS_CHARS = 100_000  # training chars behind the RMS rule's gradient statistics (seconds of work)
# Dynamic evaluation's tuning (`--dynamic-tune`): the (rate, decay) pairs tried per rule, on the
# last TUNE_CHARS training chars (README "Results": the grids around the presets' best values).
TUNE_CHARS = 30_000
TUNE_GRID = {
    "sgd": ((0.03, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0)),
    "rms": tuple((r, d) for r in (1e-4, 2e-4, 3e-4, 5e-4) for d in (0.02, 0.05, 0.1)),
}


@dataclass(frozen=True)
class SavedModel:
    params: dict
    meta: Meta  # the recipe (meta.cfg), vocabulary, default prime, epoch and its metrics

    @property
    def vocab(self) -> corpus.Vocab:
        return corpus.Vocab(self.meta.vocab)

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
    try:
        # a run interrupted in its first epoch: that epoch so far, until a whole one is saved
        partial = None if best or epoch is not None or folder.epochs() else folder.partial()
        meta = partial or get_meta(epoch)
        cfg = meta.cfg
        like = jax.eval_shape(
            lambda: model.init_params(jax.random.key(0), len(meta.vocab), cfg.hidden, cfg.layers)
        )
        checkpoints = folder if best else folder.checkpoints
        part = "ema" if cfg.ema else "params"
        if partial is not None:
            return SavedModel(checkpoints.restore_partial_params(like, part), meta)
        return SavedModel(checkpoints.restore_params(like, meta.epoch, part), meta)
    finally:
        folder.close()


def check_temperatures(temperatures) -> None:
    if not temperatures:
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


def sample_texts(
    saved: SavedModel,
    prime_ids,
    *,
    seed: int,
    temperatures,
    length: int,
    mode=None,
    num_samples: int = 1,
    **filters,
) -> list[str]:
    """Texts after `prime_ids`, `num_samples` per temperature in order (one jitted call);
    `filters`: top_k, top_p (see `sample.generate`)."""
    args, kw = _request(saved, prime_ids, seed, temperatures, length, mode, num_samples, filters)
    ids = sample.generate(*args, **kw).reshape(len(temperatures) * num_samples, length)
    return [saved.vocab.decode(row) for row in ids]


def _request(saved, prime_ids, seed, temperatures, length, mode, num_samples, filters):
    """The arguments of `sample.generate` and `stream.stream` for a saved model."""
    check_temperatures(temperatures)
    args = (saved.params, prime_ids, jax.random.key(seed), list(temperatures))
    kw = dict(
        length=length,
        mode=mode or saved.reading,
        maxlen=saved.meta.cfg.maxlen,
        num_samples=num_samples,
        **filters,
    )
    return args, kw


def stream_texts(
    saved: SavedModel,
    prime_ids,
    *,
    seed: int,
    temperatures,
    length: int,
    mode=None,
    num_samples: int = 1,
    block: int = 256,
    **filters,
):
    """`sample_texts`, block by block: an iterator of the new chars of every text (a list, in
    the same order), each as soon as its block is made; joined, they are `sample_texts`'s
    texts, byte for byte."""
    args, kw = _request(saved, prime_ids, seed, temperatures, length, mode, num_samples, filters)
    blocks = stream.stream(*args, block=block, **kw)
    return ([saved.vocab.decode(row) for row in ids] for ids in blocks)


def score_text(saved: SavedModel, path, *, mode=None, stride=1, directory=None, progress=None,
               dynamic=None):  # fmt: skip
    """-> (record, unknown chars Counter): the score of the text file `path` (None: the run's
    held-out tail, after checking that the corpus is the one trained on) in `mode`;
    `progress(done, total)` hears how far it got (`evaluate.score_ids`). `dynamic` (rate,
    decay, rule "sgd" or "rms"; rate None: tuned): also the dynamic evaluation of the same chars
    (`_dynamic`), under "dynamic" in the record, beside the static score."""
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
        saved.params,
        ids,
        mode=mode,
        maxlen=cfg.maxlen,
        stride=stride,
        dtype=cfg.dtype,
        progress=progress,
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
        rate, decay, rule = dynamic
        training = (lambda: text) if path is None else (
            lambda: corpus.load_saved(cfg, saved.meta.corpus_sha256, saved.meta.vocab, directory)
        )  # fmt: skip
        record["dynamic"] = _dynamic(saved, ids, training, rule, rate, decay, progress)
    return record, unknown


def _dynamic(saved: SavedModel, ids, training, rule: str, rate, decay, progress) -> dict:
    """The "dynamic" record of ids: `evaluate.dynamic_score` in segments of the model's
    --maxlen, by `rule`. The RMS rule's statistics come from the last RMS_CHARS chars of the
    training text (`training()` loads it, only when needed); with `rate` None the rate and decay
    are the best of TUNE_GRID[rule] on its last TUNE_CHARS chars (never the scored text)."""
    cfg = saved.meta.cfg
    run = functools.partial(
        evaluate.dynamic_score, saved.params, segment=cfg.maxlen, dtype=cfg.dtype
    )
    rms, tried = None, None
    if rule == "rms" or rate is None:
        train = training()
        end = corpus.split(train, cfg)
    if rule == "rms":
        rms = evaluate.gradient_rms(
            saved.params, train.ids[max(0, end - RMS_CHARS) : end], segment=cfg.maxlen,
            dtype=cfg.dtype,
        )  # fmt: skip
    if rate is None:
        piece = train.ids[max(0, end - TUNE_CHARS) : end]

        def tuning(r, d):
            return run(piece, rate=r, decay=d, rms=rms).nats_per_char

        tried = [{"lr": r, "decay": d, "nats_per_char": tuning(r, d)} for r, d in TUNE_GRID[rule]]
        best = min(tried, key=lambda t: _finite_or_inf(t["nats_per_char"]))
        rate, decay = best["lr"], best["decay"]
    adapted = run(ids, rate=rate, decay=decay, rms=rms, progress=progress)
    record = {
        "rule": rule, "lr": rate, "decay": decay, "segment": cfg.maxlen,
        "chars_scored": adapted.chars, "nats_per_char": adapted.nats_per_char,
        "bits_per_char": adapted.bits_per_char, "perplexity": adapted.perplexity,
    }  # fmt: skip
    if tried is not None:
        record["tuned_on_chars"], record["tried"] = len(piece), tried
    return record


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf
