"""Orbax persistence of epoch-numbered (state pytree, JSON record) pairs: `Checkpoints`.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
checkpoint is either whole or absent; a folder left half-written by a killed process is never
listed and is removed on the next start. A save that fails (a full disk, a read-only or
unwritable folder) removes its temporary folder and ends in one line (`SaveFailed`). Every
record carries digests of the state and of itself (`integrity`), checked by every restore: a
damaged checkpoint is `integrity.Damaged` (what is wrong in the user's words: a file missing,
cut short or undecodable, arrays or record not matching their digest), never silently wrong
numbers. A read the OS refuses (an I/O error, no permission) is `ReadFailed`, and a device out
of memory is raised as it is: neither is damage, which a resume would move aside. An
interrupted epoch (Ctrl-C, `--save-every`) is kept apart in `partial/`. What the records
hold, and the rest of a run's folder, is `run_dir`'s business. Importing this module changes
nothing process-wide: the commands keep orbax's own reports of a failed save or restore (logs,
the errors of its abandoned reads and writes) out of their output at start-up
(`cli.process.quiet_process`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from charjax import integrity
from charjax.errors import CharjaxError
from charjax.orbax_errors import (
    TMP_SUFFIX,
    has_status,
    os_error,
    out_of_memory,
    retrieve_abandoned_reads,
    runtime_refused,
)

PARTIAL = "partial"


def remove_unfinished(directory: Path) -> None:
    """Delete the temporary folders a killed save left behind (orbax never lists them).

    Done here, synchronously, rather than by orbax's background clean-up, which can still be
    running when a run that fails at start-up exits. Best effort: a folder that cannot be
    listed (an I/O error) is left for the next start.
    """
    try:
        found = list(directory.iterdir()) if directory.is_dir() else []
    except OSError:  # unlistable now: the next start tries again
        found = []
    for path in found:
        if TMP_SUFFIX in path.name:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def closed_after(thing):
    """`thing`, closed when the block ends. Where the block failed, that failure is the one
    raised: a close failing after it (orbax waiting on the threads of a failed read) is
    dropped instead of taking its place; after a block that went well, a failed close raises."""
    try:
        yield thing
    except BaseException:
        with contextlib.suppress(Exception):
            thing.close()
        raise
    thing.close()


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


class SaveFailed(CharjaxError):
    """A checkpoint could not be written; nothing of it is left, older ones are intact."""


def _save(manager: ocp.CheckpointManager, step: int, state, meta: dict, what: str) -> None:
    """Write (state, meta sealed with its digests) as `step`. Too little free space is found
    before writing; any failure while writing removes the unfinished folder. Both raise
    `SaveFailed` naming the folder, the error and the space a checkpoint needs."""
    directory = Path(manager.directory)
    needed = _needed_bytes(state)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise _save_failed(
            what, directory, f"{os.strerror(errno.ENOSPC)} ({_mb(free)} free)", needed
        )
    meta = integrity.sealed(meta, state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
        manager.save(step, args=args, force=True)
        manager.wait_until_finished()
    except Exception as e:
        remove_unfinished(directory)
        _raise_save_failed(e, what, directory, needed)


def _raise_save_failed(error: Exception, what: str, directory: Path, needed: int):
    """Raise `error` as `SaveFailed` where the disk caused it (an OS error), else as it is (not
    the disk's doing, e.g. a lost peer process). Called in the `except` that caught it."""
    reason = os_error(error)
    if reason is None:
        raise error
    raise _save_failed(what, directory, reason, needed) from error


def _save_failed(what: str, directory: Path, reason: str, needed: int) -> SaveFailed:
    return SaveFailed(
        f"could not save {what} to {directory}: {reason}. A checkpoint needs about "
        f"{_mb(needed)}; the checkpoints saved before are intact"
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _needed_bytes(state) -> int:
    """Bytes of a checkpoint: its arrays, and a margin for the record and orbax's files."""
    return sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)) + 256 * 1024


def _restore(manager: ocp.CheckpointManager, step: int, like, sharding=None, what="") -> tuple:
    """(state shaped like `like`, meta) of `step`, arrays on `sharding` (default: 1st device),
    both checked against the record's digests."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = _abstract(like, sharding)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    where = what or f"checkpoint {step} in {manager.directory}"
    try:
        restored = manager.restore(step, args=args)
    except Exception as e:
        raise _read_failed(e, where, step, manager.directory, ("structure",)) from e
    meta = integrity.check_record(restored["meta"], where)
    return integrity.check_state(restored["state"], meta, where), meta


def _read_failed(error: Exception, where: str, step: int, directory, layout=()) -> CharjaxError:
    """Why a restore failed, in one line: orbax's ValueError naming one of the words `layout`
    (a state of another layout), else `_unreadable`."""
    if isinstance(error, ValueError) and any(w in str(error) for w in layout):
        if not has_status(error):  # TensorStore's errors are files', never a layout's
            retrieve_abandoned_reads()
            return _other_layout(step, directory)
    return _unreadable(where, error)


class ReadFailed(CharjaxError):
    """The OS refused to read a checkpoint (an I/O error, no permission, too many open
    files): not known to be damaged, so a resume leaves it where it is."""


def _unreadable(where: str, error: Exception) -> CharjaxError:
    """`integrity.Damaged` for a checkpoint whose files are missing or whose bytes cannot be
    decoded. What is no damage, which a resume would move aside, is not `Damaged`: an OS error
    other than a missing file or a refusal of jax's runtime (`orbax_errors.runtime_refused`) is
    `ReadFailed`, and a device out of memory (a model too big for it) is raised as it is (jax's
    RESOURCE_EXHAUSTED, which the commands say in one line)."""
    retrieve_abandoned_reads()  # the failed reads' errors: this report is their one line
    exhausted = out_of_memory(error)
    if exhausted is not None:
        raise exhausted
    refused = runtime_refused(error)
    if refused is not None:
        return ReadFailed(
            f"could not read {where}: {refused}; it is left as it is: run the command again"
        )
    reason = os_error(error)
    if reason is not None and reason != os.strerror(errno.ENOENT):
        return ReadFailed(
            f"could not read {where}: {reason}; it is left as it is: check the disk (or the "
            "folder's permissions) and run the command again"
        )
    return integrity.unreadable(where, error)


def _read_meta(manager: ocp.CheckpointManager, step: int, where: str) -> dict:
    """The JSON record of `step`, checked against its own digest (`Damaged` otherwise)."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:
        raise _unreadable(where, e) from e
    return integrity.check_record(restored["meta"], where)


def _abstract(like, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), like)


def _other_layout(step: int, directory) -> CharjaxError:
    return CharjaxError(
        f"checkpoint {step} in {directory} holds a state of another layout than this "
        "charjax version trains (written by another version?); sample or resume it with "
        "the version that wrote it, or train again"
    )


def _restore_params(manager: ocp.CheckpointManager, step: int, like_params, part: str, where):
    """The `part` of the state saved as `step` alone, checked against its record's digests."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {part: _abstract(like_params, sharding)}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    args = ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
    meta = _read_meta(manager, step, where)
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    except Exception as e:
        raise _read_failed(e, where, step, manager.directory, ("structure", "shape")) from e
    return integrity.check_state(state, meta, where, parts=[part])[part]


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
        self._forgotten: set[int] = set()  # epochs set aside as damaged (`set_aside`)
        self._failed = False  # a save failed: its writes still in flight may leave files

    def epochs(self) -> list[int]:
        """The saved epochs, less those set aside: forgotten by every process of a run at once,
        whether or not process 0 has renamed the folder yet."""
        return sorted(set(self._manager.all_steps()) - self._forgotten)

    def save(self, epoch: int, state, meta: dict) -> None:
        """Write epoch `epoch` (state pytree + JSON-able meta) and prune old ones."""
        self._forgotten.discard(epoch)  # written anew: listed again
        try:
            _save(self._manager, epoch, state, meta, f"epoch {epoch}")
        except SaveFailed:
            self._failed = True
            raise

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
        """The record of `epoch` (default: latest), checked against its own digest."""
        epoch = self._epoch_or_latest(epoch)
        return _read_meta(self._manager, epoch, f"epoch {epoch} in {self.directory}")

    def restore(self, like, epoch: int | None = None, sharding=None):
        """The state saved at `epoch` (default: latest), shaped like the pytree `like`.

        Arrays land on `sharding` (default: the first local device), whatever devices the
        run that saved them used.
        """
        epoch = self._epoch_or_latest(epoch)
        where = f"epoch {epoch} in {self.directory}"
        return _restore(self._manager, epoch, like, sharding, where)[0]

    def restore_params(self, like_params, epoch: int, part: str = "params"):
        """Only the parameters of epoch `epoch`, shaped like `like_params` (for inference: the
        optimizer state is neither built nor read), on the first local device. `part`: the
        state's "params", or "ema" (their moving average, under --ema)."""
        where = f"epoch {epoch} in {self.directory}"
        return _restore_params(self._manager, epoch, like_params, part, where)

    def restore_partial_params(self, like_params, part: str = "params"):
        """`restore_params` of the interrupted epoch."""
        with closed_after(self._partial_manager()) as manager:
            where = f"the interrupted epoch in {self.directory}"
            return _restore_params(manager, manager.latest_step(), like_params, part, where)

    # An epoch interrupted part-way: at most one, kept apart from the complete epochs.
    def _partial_manager(self, create: bool = False) -> ocp.CheckpointManager | None:
        path = self.directory / PARTIAL
        if not (create or path.is_dir()):
            return None
        return _manager(path, 1, create)

    def save_partial(self, step: int, state, meta: dict) -> None:
        """Save an interrupted epoch under its optimizer step (which only grows, so a second
        interruption of the same epoch is a newer save); the epoch is in `meta`."""
        what = f"epoch {meta.get('epoch')} so far"
        try:
            manager = self._partial_manager(create=True)
        except Exception as e:  # its folder could not be made or cleaned up
            _raise_save_failed(e, what, self.directory / PARTIAL, _needed_bytes(state))
        failed = True
        try:
            with closed_after(manager):
                _save(manager, step, state, meta, what)
                failed = False
        finally:
            if failed:  # what its writes still in flight left, once the manager is closed
                remove_unfinished(self.directory / PARTIAL)

    def partial_meta(self) -> dict | None:
        """Metadata of the interrupted epoch (with its `position`), or None if there is none."""
        manager = self._partial_manager()
        if manager is None:
            return None
        with closed_after(manager):
            step = manager.latest_step()
            if step is None:
                return None
            return _read_meta(manager, step, f"the interrupted epoch in {self.directory}")

    def restore_partial(self, like, sharding=None):
        """The state of the interrupted epoch, shaped like `like`."""
        with closed_after(self._partial_manager()) as manager:
            where = f"the interrupted epoch in {self.directory}"
            return _restore(manager, manager.latest_step(), like, sharding, where)[0]

    def set_aside(self, epoch: int | None, move: bool = True) -> Path:
        """Rename a damaged checkpoint (None: the interrupted epoch's folder) to
        `<name>.damaged[-N]`, which orbax does not list (with `move`; else only forget it)
        -> its new path."""
        source = self.directory / (PARTIAL if epoch is None else str(epoch))
        target, n = source.with_name(source.name + ".damaged"), 1
        while target.exists():
            n += 1
            target = source.with_name(f"{source.name}.damaged-{n}")
        if move:
            source.rename(target)
        if epoch is not None:  # let the manager forget the step it listed
            self._forgotten.add(epoch)
            self._manager.reload()
        return target

    def clear_partial(self) -> None:
        """Delete the interrupted epoch's folder, first renamed to a temporary name: a deletion
        that fails part-way (an I/O error) leaves a folder that the next start removes, never a
        half-deleted one that a resume would read as damaged."""
        path = self.directory / PARTIAL
        gone = path.with_name(PARTIAL + TMP_SUFFIX)
        try:
            path.rename(gone)
        except OSError:  # none, or still whole: the epoch saved after it supersedes it
            return
        shutil.rmtree(gone, ignore_errors=True)

    def close(self) -> None:
        # Let orbax's background work (e.g. the root metadata written at start-up) finish:
        # otherwise a run that fails early can leave a thread logging at interpreter exit.
        self._manager.wait_until_finished()
        self._manager.close()
        if self._failed:  # a failed save's writes still in flight when it removed its folder
            remove_unfinished(self.directory)
