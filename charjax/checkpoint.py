"""Per-epoch checkpoints with orbax: train state plus JSON metadata (vocab, config, metrics).

A checkpoint directory alone is enough to resume or sample. Orbax writes each epoch into a
temporary folder and renames it when complete, so a checkpoint is either whole or absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from charjax.config import Config
from charjax.errors import CharjaxError

# orbax logs every save at INFO through absl; keep the console for the user's output.
logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpoints:
    """Epoch-numbered checkpoints in `directory`, keeping the newest `keep`."""

    def __init__(self, directory: str | Path, keep: int = 5, *, create: bool = True):
        self.directory = Path(directory).expanduser().absolute()
        if not create and not self.directory.is_dir():
            raise CharjaxError(
                f"checkpoint directory {self.directory} does not exist; train first or pass "
                "--checkpoint-dir"
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def epochs(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, state, meta: dict) -> None:
        """Write epoch `epoch` (state pytree + JSON-able meta) and prune old ones."""
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def _epoch_or_latest(self, epoch: int | None) -> int:
        have = self.epochs()
        if not have:
            raise CharjaxError(
                f"no checkpoints in {self.directory}; train first (charjax-train "
                f"--checkpoint-dir {self.directory})"
            )
        if epoch is None:
            return have[-1]
        if epoch not in have:
            raise CharjaxError(
                f"no checkpoint for epoch {epoch} in {self.directory}; available: "
                f"{', '.join(map(str, have))}"
            )
        return epoch

    def meta(self, epoch: int | None = None) -> dict:
        epoch = self._epoch_or_latest(epoch)
        restored = self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return restored["meta"]

    def restore(self, like, epoch: int | None = None, sharding=None):
        """The state saved at `epoch` (default: latest), shaped like the pytree `like`.

        Arrays land on `sharding` (default: the first local device), whatever devices the
        run that saved them used.
        """
        epoch = self._epoch_or_latest(epoch)
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like
        )
        restored = self._manager.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


def make_meta(
    cfg: Config, vocab_chars: str, corpus_sha256: str, epoch: int, metrics: dict, prime: str
) -> dict:
    """The JSON that makes a checkpoint self-contained."""
    return {
        "format": 1,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "vocab": vocab_chars,
        "corpus_sha256": corpus_sha256,
        "prime": prime,
        "metrics": metrics,
    }


def config_of(meta: dict) -> Config:
    return Config.from_dict(meta["config"])
