"""Orbax persistence of epoch-numbered (state pytree, JSON record) pairs: `Checkpoints`.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
checkpoint is either whole or absent; a folder left half-written by a killed process is never
listed and is removed on the next start. An interrupted epoch (Ctrl-C) is kept apart in
`partial/`. What the records hold, and the rest of a run's folder, is `run_dir`'s business.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from charjax.errors import CharjaxError

# orbax logs every save at INFO through absl; keep the console for the user's output.
logging.getLogger("absl").setLevel(logging.WARNING)

PARTIAL = "partial"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint still being written


def remove_unfinished(directory: Path) -> None:
    """Delete the temporary folders a killed save left behind (orbax never lists them).

    Done here, synchronously, rather than by orbax's background clean-up, which can still be
    running when a run that fails at start-up exits.
    """
    if directory.is_dir():
        for path in directory.iterdir():
            if TMP_SUFFIX in path.name:
                shutil.rmtree(path, ignore_errors=True)


def _manager(directory: Path, keep: int, create: bool) -> ocp.CheckpointManager:
    if create:
        remove_unfinished(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=create,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=False,  # done synchronously by `remove_unfinished`
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager.save(step, args=args, force=True)
    manager.wait_until_finished()


def _restore(manager: ocp.CheckpointManager, step: int, like, sharding=None) -> tuple:
    """(state shaped like `like`, meta) of `step`, arrays on `sharding` (default: 1st device)."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = _abstract(like, sharding)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    try:
        restored = manager.restore(step, args=args)
    except ValueError as e:
        if "structure" not in str(e):
            raise
        raise _other_layout(step, manager.directory) from None
    return restored["state"], restored["meta"]


def _abstract(like, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)


def _other_layout(step: int, directory) -> CharjaxError:
    return CharjaxError(
        f"checkpoint {step} in {directory} holds a state of another layout than this "
        "charjax version trains (written by another version?); sample or resume it with "
        "the version that wrote it, or train again"
    )


class Checkpoints:
    """Epoch-numbered checkpoints in `directory`, keeping the newest `keep`."""

    def __init__(self, directory: str | Path, keep: int = 5, *, create: bool = True):
        self.directory = Path(directory).expanduser().absolute()
        if not create and not self.directory.is_dir():
            raise CharjaxError(
                f"checkpoint directory {self.directory} does not exist; train first or pass "
                "--checkpoint-dir"
            )
        self.keep = keep
        self._manager = _manager(self.directory, keep, create)

    def epochs(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, epoch: int, state, meta: dict) -> None:
        """Write epoch `epoch` (state pytree + JSON-able meta) and prune old ones."""
        _save(self._manager, epoch, state, meta)

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
        return _restore(self._manager, self._epoch_or_latest(epoch), like, sharding)[0]

    def restore_params(self, like_params, epoch: int):
        """Only the parameters of epoch `epoch`, shaped like `like_params` (for inference: the
        optimizer state is neither built nor read), on the first local device."""
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        item = {"params": _abstract(like_params, sharding)}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        args = ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
        try:
            state = self._manager.restore(epoch, args=ocp.args.Composite(state=args))["state"]
        except ValueError as e:
            if "structure" not in str(e) and "shape" not in str(e):
                raise
            raise _other_layout(epoch, self.directory) from None
        return state["params"]

    # An epoch interrupted part-way: at most one, kept apart from the complete epochs.
    def _partial_manager(self, create: bool = False) -> ocp.CheckpointManager | None:
        path = self.directory / PARTIAL
        if not (create or path.is_dir()):
            return None
        return _manager(path, 1, create)

    def save_partial(self, step: int, state, meta: dict) -> None:
        """Save an interrupted epoch under its optimizer step (which only grows, so a second
        interruption of the same epoch is a newer save); the epoch is in `meta`."""
        manager = self._partial_manager(create=True)
        _save(manager, step, state, meta)
        manager.close()

    def partial_meta(self) -> dict | None:
        """Metadata of the interrupted epoch (with its `position`), or None if there is none."""
        manager = self._partial_manager()
        if manager is None:
            return None
        try:
            step = manager.latest_step()
            if step is None:
                return None
            args = ocp.args.Composite(meta=ocp.args.JsonRestore())
            return manager.restore(step, args=args)["meta"]
        finally:
            manager.close()

    def restore_partial(self, like, sharding=None):
        """The state of the interrupted epoch, shaped like `like`."""
        manager = self._partial_manager()
        try:
            return _restore(manager, manager.latest_step(), like, sharding)[0]
        finally:
            manager.close()

    def clear_partial(self) -> None:
        shutil.rmtree(self.directory / PARTIAL, ignore_errors=True)

    def close(self) -> None:
        # Let orbax's background work (e.g. the root metadata written at start-up) finish:
        # otherwise a run that fails early can leave a thread logging at interpreter exit.
        self._manager.wait_until_finished()
        self._manager.close()
