"""A training run's folder: its lock, its checkpoints (whole epochs and one interrupted epoch),
the typed record saved beside each (`Meta`, checkpoint FORMAT 3) and `metrics.jsonl`.

An epoch's metrics are written once, by `RunDir.save_epoch`, into its checkpoint record and
the append-only log; a run killed between the two has its log completed from the record on the
next start (`RunDir.repair_metrics`), so the record is the source of truth.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from charjax.checkpoint import Checkpoints, SaveFailed
from charjax.config import Config
from charjax.epoch import Position
from charjax.errors import CharjaxError
from charjax.metrics_log import METRICS_FILE, append_metrics, read_metrics

__all__ = ["METRICS_FILE", "Meta", "RunDir", "append_metrics", "lock_directory", "read_metrics"]

FORMAT = 3  # 2: TrainState has lr_scale and carry; 3: windows shuffled by `batching.shuffle`
LOCK_FILE = ".lock"
BEST = "best"  # --keep-best: the epoch with the lowest held-out loss, one checkpoint


@dataclass(frozen=True)
class Meta:
    """What makes a checkpoint self-contained: the recipe, vocabulary, corpus hash, a default
    prime, the epoch and its metrics; an interrupted epoch also has its position."""

    cfg: Config
    vocab: str
    corpus_sha256: str
    prime: str  # the first maxlen chars of the training text: the default prime for sampling
    epoch: int
    metrics: dict = field(default_factory=dict)
    position: Position | None = None
    format: int = FORMAT  # of the record as written (an older one still samples and scores)

    def to_json(self) -> dict:
        record = {
            "format": self.format,
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "vocab": self.vocab,
            "corpus_sha256": self.corpus_sha256,
            "prime": self.prime,
            "metrics": self.metrics,
        }
        if self.position is not None:
            record["position"] = self.position.to_json()
        return record

    @classmethod
    def from_json(cls, record: dict) -> Meta:
        """The record as saved; checkpoints of an older layout are refused in one line."""
        if record.get("format", 1) < 2:
            raise CharjaxError(
                f"this checkpoint (epoch {record.get('epoch')}) was written by an older charjax "
                f"(format {record.get('format', 1)}: no held-out split, learning-rate scale or "
                "stream state); use that version with it, or train again"
            )
        position = record.get("position")
        return cls(
            Config.from_dict(record["config"]),
            record["vocab"],
            record["corpus_sha256"],
            record["prime"],
            record["epoch"],
            record.get("metrics", {}),
            None if position is None else Position.from_json(position),
            record["format"],
        )


def lock_directory(directory: Path):
    """Create `directory`, check it is writable, and lock it for this process (-> lock file).

    Fails at once, before any training, if the directory cannot be written or if another
    training run holds it. The lock (flock) is released when the process ends, however it ends.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise CharjaxError(
            f"cannot write checkpoints to {directory} ({e.strerror or e}); choose another "
            "--checkpoint-dir"
        ) from None
    handle = open(directory / LOCK_FILE, "a+")  # noqa: SIM115 (held until the run ends)
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock (Windows): run unlocked
        return handle
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise CharjaxError(
            f"another training run (pid {holder}) is using {directory}; wait for it to finish "
            "or choose another --checkpoint-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _outermost_missing(directory: Path) -> Path | None:
    """The outermost of `directory` and its parents that does not exist yet (None: it does)."""
    missing = None
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing = path
    return missing


class RunDir:
    """One run's folder. `lock=True` (a training run's primary process) holds the lock; only
    the `primary` process writes metrics.jsonl and removes a superseded partial epoch."""

    def __init__(self, directory, keep: int = 5, *, lock=False, create=True, primary=True):
        self.directory = Path(directory).expanduser().absolute()
        self.primary = primary
        # the outermost folder this run makes (None: the folder was there), for `close`
        self.created = _outermost_missing(self.directory) if lock else None
        self._lock = lock_directory(self.directory) if lock else None
        try:
            self.checkpoints = Checkpoints(self.directory, keep, create=create)
        except BaseException:
            if self._lock is not None:
                self._lock.close()
            raise

    def keep(self, keep: int) -> None:
        """Keep the newest `keep` epochs from now on (a resumed run's own --keep)."""
        if keep != self.checkpoints.keep:
            self.checkpoints.close()
            self.checkpoints = Checkpoints(self.directory, keep)

    def epochs(self) -> list[int]:
        return self.checkpoints.epochs()

    def meta(self, epoch: int | None = None) -> Meta:
        """The record of `epoch` (default: the latest)."""
        return Meta.from_json(self.checkpoints.meta(epoch))

    def set_aside(self, epoch: int | None) -> Path:
        """Move a damaged checkpoint (None: the interrupted epoch) out of the way (process 0
        moves it; every process forgets it) -> where."""
        return self.checkpoints.set_aside(epoch, move=self.primary)

    def partial(self) -> Meta | None:
        """The record of the epoch an interruption saved, unless a later epoch superseded it."""
        record = self.checkpoints.partial_meta()
        have = self.epochs()
        if record is None or record["epoch"] != (have[-1] if have else 0) + 1:
            return None
        return Meta.from_json(record)

    def restore(self, like, epoch: int | None = None, sharding=None):
        return self.checkpoints.restore(like, epoch, sharding)

    def restore_partial(self, like, sharding=None):
        return self.checkpoints.restore_partial(like, sharding)

    def save_epoch(self, state, meta: Meta) -> None:
        """Checkpoint a finished epoch, retire its interrupted save and log its metrics."""
        self.checkpoints.save(meta.epoch, state, meta.to_json())
        if self.primary:
            self.checkpoints.clear_partial()
            try:
                append_metrics(self.directory, meta.metrics)
            except OSError as e:  # the checkpoint holds them: the next start logs them
                raise SaveFailed(
                    f"saved epoch {meta.epoch} but could not append it to {METRICS_FILE} in "
                    f"{self.directory}: {e.strerror or e}"
                ) from e

    def save_best(self, state, meta: Meta) -> None:
        """Keep this epoch as the run's best (--keep-best): one checkpoint in best/, apart from
        the rotation of --keep."""
        best = Checkpoints(self.directory / BEST, keep=1)
        try:
            best.save(meta.epoch, state, meta.to_json())
        finally:
            best.close()

    def save_partial(self, state, meta: Meta) -> None:
        """Save an interrupted epoch (under its optimizer step: a later interruption of the
        same epoch is a newer save)."""
        self.checkpoints.save_partial(int(state.step), state, meta.to_json())

    def log_step(self, record: dict) -> None:
        """Append a mid-epoch record (with its "step") to metrics.jsonl."""
        if self.primary:
            append_metrics(self.directory, record)

    def clear_partial(self) -> None:
        if self.primary:
            self.checkpoints.clear_partial()

    def metrics(self) -> list[dict]:
        return read_metrics(self.directory)

    def repair_metrics(self) -> None:
        """Log the latest epoch's metrics if the run died after its checkpoint, before its log
        line. Every process reads the record (orbax reads are collective in a multi-process
        run: a read by process 0 alone would leave the others a collective behind)."""
        have = self.epochs()
        if not have:
            return
        latest = self.meta(have[-1])
        if self.primary and latest.epoch not in [m["epoch"] for m in self.metrics()]:
            append_metrics(self.directory, latest.metrics)

    def close(self) -> None:
        """Release the folder. The folders this run made are removed if they hold nothing but
        the lock (a failed start: a run that saved anything leaves files); a folder that was
        there before is never touched."""
        self.checkpoints.close()
        if self.created is not None and self.created.is_dir():
            lock = self.directory / LOCK_FILE
            if all(p.is_dir() or p == lock for p in self.created.rglob("*")):
                shutil.rmtree(self.created, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
