"""Faults at rest and at save time: damaged checkpoints (a truncated array file, a flipped byte
in one, a broken record) are named in one line, resume falls back to the newest intact epoch and
sampling refuses; a save that hits an OS error (a real one: the file-size limit of the process)
ends in one line, leaves nothing half-written and the run resumes once the error is gone."""

import asyncio
import gc
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
from util import orbax_like, quiet, same_trees

from charjax import checkpoint, cli, integrity, runner
from charjax.checkpoint import TMP_SUFFIX, Checkpoints, ReadFailed, SaveFailed
from charjax.cli.process import DropUnretrievedOrbaxErrors
from charjax.errors import CharjaxError
from charjax.integrity import Damaged


def test_digests_cover_every_part_and_every_byte():
    state = {"params": {"w": jnp.arange(4.0)}, "step": jnp.int32(3)}
    record = integrity.sealed({"format": 3, "epoch": 1}, state)
    assert set(record[integrity.DIGESTS]) == {"params", "step"}
    assert integrity.check_record(json.loads(json.dumps(record)), "x") == record
    assert integrity.check_state(state, record, "x") is state
    flipped = {**state, "params": {"w": jnp.arange(4.0).at[2].set(2.0000002)}}
    with pytest.raises(Damaged, match="x is damaged: its params arrays"):
        integrity.check_state(flipped, record, "x")
    with pytest.raises(Damaged, match="does not match its digest"):
        integrity.check_record({**record, "epoch": 2}, "x")
    with pytest.raises(Damaged, match="lost its digest"):
        integrity.check_record({"format": 3, "epoch": 2}, "x")
    assert integrity.check_record({"format": 2, "epoch": 2}, "x")  # older: unchecked


def _array_files(run, epoch):
    return sorted((run / str(epoch) / "state").glob("ocdbt.process_*/d/*"))


def _truncate(run):  # each array file, as a sync cut short leaves them
    for path in _array_files(run, 2):
        path.write_bytes(path.read_bytes()[:64])


def _flip_every_512(path):  # bad storage: a flipped bit every 512 bytes
    data = bytearray(path.read_bytes())
    for at in range(256, len(data), 512):
        data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _flip(run):  # in every array file, so that every array is hit
    for path in _array_files(run, 2):
        _flip_every_512(path)


def _break_record(run):
    record = run / "2" / "meta" / "metadata"
    record.write_text(record.read_text().replace('"epoch": 2', '"epoch": 7', 1))


@pytest.mark.parametrize("damage", [_truncate, _flip, _break_record], ids=lambda f: f.__name__)
def test_a_damaged_epoch_is_named_skipped_on_resume_and_refused_for_sampling(
    damage, tiny_cfg, tmp_path, capsys
):
    cfg = tiny_cfg.replace(epochs=2, temperatures=())
    reference, _ = runner.train_run(cfg.replace(epochs=3), tmp_path / "reference", log=quiet)
    run = tmp_path / "run"
    runner.train_run(cfg, run, log=quiet)
    damage(run)
    assert cli.sample_main(["--checkpoint-dir", str(run), "--length", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"epoch 2 in {run} is damaged" in err, err
    lines = []
    resumed, history = runner.train_run(
        cfg, run, resume=True, given={"epochs": 3}, log=lines.append
    )
    said = [line for line in lines if "is damaged" in line]
    assert len(said) == 1 and "moved it to 2.damaged" in said[0], lines
    assert f"resuming from epoch 1 in {run}" in lines, lines
    assert [m["epoch"] for m in history] == [2, 3] and same_trees(resumed, reference)
    assert Checkpoints(run).epochs() == [1, 2, 3] and (run / "2.damaged").is_dir()


def _wrapped(cause: Exception) -> Exception:
    """`cause` as orbax wraps a failed array read: in an error holding a TensorStore spec."""
    try:
        try:
            raise cause
        except Exception as e:
            raise Exception(
                "Encountered error while reading array index: (slice(0, 16, 1),). See full "
                "TensorStore details: <bound method pybind11_detail_function_record_v1.spec of "
                "TensorStore({\n  'base': {\n    'driver': 'zarr',\n  },\n})>."
            ) from e
    except Exception as e:
        return e


READING = 'Error reading "{}/0" in OCDBT database at local file "/r/2/state/": '


def test_unreadable_files_are_named_in_the_users_words():
    cases = [
        (ValueError("OUT_OF_RANGE: " + READING.format("params.lstm.bias") + "Requested byte "
                    "range [0, 1947) is not valid for value of size 1000"),
         "a file of its params arrays is missing or cut short"),
        (ValueError("FAILED_PRECONDITION: " + READING.format("opt_state.0.mu.dense.kernel") +
                    "Truncated Zstd-compressed stream; at byte 0"),
         "a file of its opt_state arrays is missing or cut short"),
        (ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "ema.dense.bias/.zarray" '
                    "in OCDBT database does not exist [tensorstore_spec[1]='{...}']"),
         "a file of its ema arrays is missing"),
        (ValueError("PERMISSION_DENIED: " + READING.format("params.dense.bias") +
                    "[os_error_code='13']"),
         "a file of its params arrays cannot be read (Permission denied)"),
        (ValueError("DATA_LOSS: " + READING.format("params.dense.bias") + "checksum mismatch"),
         "a file of its params arrays cannot be decoded (its bytes are not what was written)"),
    ]  # fmt: skip
    for cause, said in cases:
        damaged = integrity.unreadable("epoch 2 in /r", _wrapped(cause))
        assert str(damaged) == f"epoch 2 in /r is damaged: {said}"
    record = FileNotFoundError("File /r/2/meta/metadata not found.")
    assert str(integrity.unreadable("epoch 2 in /r", record)).endswith("its record file is missing")
    try:
        json.loads('{"epoch": 2, "vocab')
    except json.JSONDecodeError as e:
        broken = integrity.unreadable("epoch 2 in /r", e)
    assert str(broken).endswith(": its record file is not valid JSON")


def test_a_refusal_of_the_runtime_while_reading_is_no_damage():
    # jax's device_put when the OS refuses /dev/urandom (as an injected openat error does)
    urandom = RuntimeError("random_device::random_device(const std::string&): device not available")
    refused = checkpoint._unreadable("epoch 2 in /r", _wrapped(urandom))
    assert isinstance(refused, ReadFailed) and not isinstance(refused, Damaged)
    assert str(refused) == (
        f"could not read epoch 2 in /r: RuntimeError: {urandom}; it is left as it is: run the "
        "command again"
    )
    status = ValueError("DATA_LOSS: " + READING.format("params.dense.bias") + "checksum mismatch")
    try:
        raise RuntimeError("wrapped") from status
    except RuntimeError as e:  # TensorStore's report of a file in the chain: damage
        assert isinstance(checkpoint._unreadable("epoch 2 in /r", e), Damaged)


def test_an_os_error_while_reading_is_named_and_the_epoch_left_in_place(
    tiny_cfg, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    runner.train_run(tiny_cfg.replace(epochs=1, temperatures=()), run, log=quiet)
    failing = ValueError("UNKNOWN: " + READING.format("params.dense.bias") + "[os_error_code='5']")

    def restore(*args, **kw):
        raise _wrapped(failing)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    with pytest.raises(ReadFailed) as failed:
        runner.train_run(tiny_cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    assert str(failed.value) == (
        f"could not read epoch 1 in {run}: Input/output error; it is left as it is: check the "
        "disk (or the folder's permissions) and run the command again"
    )
    assert not isinstance(failed.value, Damaged)
    monkeypatch.undo()  # the disk is back: the run goes on from where it was
    _, history = runner.train_run(tiny_cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    assert [m["epoch"] for m in history] == [2] and not list(run.glob("*.damaged"))


def _limited(limit: int):
    """A child's file-size limit: writing past `limit` bytes fails with EFBIG (SIGXFSZ off)."""

    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


NO_SHARED_CACHE = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}


@pytest.mark.slow
def test_a_save_that_fails_ends_in_one_line_and_the_run_resumes(tiny_cfg, tmp_path):
    ck = tmp_path / "ck"
    runner.train_run(tiny_cfg.replace(epochs=1, temperatures=()), ck, log=quiet)
    train = [sys.executable, "-c", "import sys; from charjax.cli import train_main; "
             "sys.exit(train_main(sys.argv[1:]))", "--checkpoint-dir", str(ck)]  # fmt: skip
    full = subprocess.run(
        [*train, "--resume", "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited(4096),  # every array file of a checkpoint is larger
        env=NO_SHARED_CACHE,  # whose entries it would cut short for the processes after it
    )
    assert full.returncode == 2, full.stderr
    assert full.stderr.count("\n") == 1, full.stderr
    assert f"could not save epoch 2 to {ck}: File too large" in full.stderr
    assert "A checkpoint needs about" in full.stderr and "--resume --checkpoint-dir" in full.stderr
    assert Checkpoints(ck).epochs() == [1]
    assert not [p for p in ck.iterdir() if "tmp" in p.name]  # nothing half-written is left
    lines = []
    runner.train_run(tiny_cfg, ck, resume=True, given={"epochs": 3}, log=lines.append)
    assert f"resuming from epoch 1 in {ck}" in lines and Checkpoints(ck).epochs() == [1, 2, 3]


def _unretrieved_task_log(error, caplog) -> list[str]:
    """What asyncio logs when a task that raised `error` (or ran the coroutine function
    `error`) is collected unretrieved (as orbax's tasks are when a save or restore fails)."""

    async def write():
        raise error

    loop = asyncio.new_event_loop()
    task = loop.create_task(error() if callable(error) else write())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del task
        gc.collect()
    return [r.getMessage() for r in caplog.records if r.name == "asyncio"]


def test_failed_orbax_tasks_are_not_logged_again_other_task_errors_are(caplog, monkeypatch):
    # the filter every command adds at start-up (`quiet_process`), here alone
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [DropUnretrievedOrbaxErrors()])
    disk = ValueError(
        "OUT_OF_RANGE: Failed to write 5864 bytes: File too large [os_error_code='27']"
    )
    assert _unretrieved_task_log(disk, caplog) == []  # SaveFailed already said it, once
    caplog.clear()
    logged = _unretrieved_task_log(ValueError("a bug"), caplog)
    assert len(logged) == 1 and logged[0].startswith("Task exception was never retrieved")
    caplog.clear()
    read = orbax_like("_read_array_index_and_device_put", "Encountered error while reading")
    assert _unretrieved_task_log(read, caplog) == []  # Damaged already said it, once
    caplog.clear()
    other = orbax_like("another_coroutine", "Encountered error while reading")
    assert len(_unretrieved_task_log(other, caplog)) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted for the test (needs root and the right to mount)."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the file-size-limit test covers saves")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()[:80]})")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow  # mounts a tmpfs (a process)
def test_a_full_disk_stops_the_run_in_one_line_and_resume_goes_on(tiny_cfg, small_disk):
    cfg = tiny_cfg.replace(epochs=1, temperatures=(), keep=1)
    run = small_disk / "run"
    runner.train_run(cfg, run, log=quiet)
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (free - 100_000))  # less than a checkpoint is left
    with pytest.raises(SaveFailed) as failed:
        runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    message = str(failed.value)
    assert "\n" not in message and f"could not save epoch 2 to {run}" in message
    assert "No space left on device" in message and "--resume --checkpoint-dir" in message
    assert Checkpoints(run).epochs() == [1]
    assert not [p for p in run.iterdir() if "tmp" in p.name]
    filler.unlink()
    _, history = runner.train_run(cfg, run, resume=True, given={"epochs": 2}, log=quiet)
    assert [m["epoch"] for m in history] == [2] and Checkpoints(run).epochs() == [2]


def test_resume_with_only_an_unfinished_save_says_there_is_nothing(tiny_cfg, tmp_path):
    (tmp_path / "partial" / f"3{TMP_SUFFIX}").mkdir(parents=True)  # a save killed midway
    with pytest.raises(CharjaxError, match="nothing to resume: no checkpoints in"):
        runner.train_run(tiny_cfg, tmp_path, resume=True, given={}, log=quiet)


CLI = "import sys; from charjax import cli; sys.exit(getattr(cli, sys.argv[1])(sys.argv[2:]))"


def _command(name: str, *argv) -> subprocess.CompletedProcess:
    """A command run as a user runs it, in its own process (its hooks and filters installed)."""
    return subprocess.run(
        [sys.executable, "-c", CLI, name, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )


PROBE = """
import shutil, sys
from pathlib import Path
from charjax import inference
from charjax.cli.process import quiet_process
from charjax.integrity import Damaged
quiet_process()
run = Path(sys.argv[1])
for path in sorted((run / sys.argv[2] / "state").glob("ocdbt.process_*/d/*")):
    copy = run.with_name("probe")
    shutil.copytree(run, copy)
    (copy / path.relative_to(run)).write_bytes(b"")
    try:
        inference.load(copy)
    except Damaged:
        print(path)
    shutil.rmtree(copy)
"""


def _params_files(run, epoch) -> list[Path]:
    """The array files that epoch `epoch`'s parameters are read from: each one, emptied in a
    copy, makes reading the parameters fail (found in a process of its own, whose leftovers of
    the failed reads are dropped as a command drops them)."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(run), str(epoch)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0 and not probe.stderr, probe.stderr
    return [Path(line) for line in probe.stdout.splitlines()]


PARAMS_DAMAGE = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:1000]),
    "deleted": lambda path: path.unlink(),
    "byte-flipped": _flip_every_512,
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(PARAMS_DAMAGE))
def test_a_damaged_params_file_is_one_line_on_stderr_for_sample_and_resume(
    damage, tiny_cfg, tmp_path
):
    # a model whose parameters span many array reads: a failed one leaves orbax's other reads
    # behind, which Python would report at exit, each with a TensorStore spec of ~60 lines
    cfg = tiny_cfg.replace(epochs=2, hidden=128, layers=2, temperatures=())
    run = tmp_path / "run"
    runner.train_run(cfg, run, log=quiet)
    files = _params_files(run, 2)
    assert files, "no array file holds the parameters"
    for path in files:
        PARAMS_DAMAGE[damage](path)
    sample = _command("sample_main", "--checkpoint-dir", run, "--length", "10")
    assert sample.returncode == 2, sample.stderr
    assert sample.stderr.count("\n") == 1, sample.stderr
    assert sample.stderr.startswith(f"charjax-sample: error: epoch 2 in {run} is damaged: ")
    assert "TensorStore" not in sample.stderr and "Exception" not in sample.stderr
    resumed = _command("train_main", "--resume", "--epochs", "3", "--checkpoint-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("\n") == 1, resumed.stderr
    assert resumed.stderr.startswith(f"epoch 2 in {run} is damaged: "), resumed.stderr
    assert resumed.stderr.endswith("moved it to 2.damaged and trying the checkpoint before it\n")
    assert f"resuming from epoch 1 in {run}" in resumed.stdout
    assert Checkpoints(run).epochs() == [1, 2, 3]


SWEEP = """
import contextlib, gc, io, json, shutil, sys
from pathlib import Path
from charjax import cli
run = Path(sys.argv[1])
said = {}
for path in sorted((run / "2" / "state").glob("ocdbt.process_*/d/*")):
    for damage in ("truncated", "deleted"):
        copy = run.with_name("damaged")
        shutil.copytree(run, copy)
        target = copy / path.relative_to(run)
        if damage == "deleted":
            target.unlink()
        else:
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.sample_main(["--checkpoint-dir", str(copy), "--length", "5"])
            gc.collect()  # what a failed read left behind is reported when collected
        said[f"{path.name} {damage}"] = [code, err.getvalue()]
        shutil.rmtree(copy)
print(json.dumps(said))
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_array_file_of_an_epoch_damaged_in_turn_is_one_stderr_line(seed, tiny_cfg, tmp_path):
    """Every data file of an epoch, cut to half or deleted, one at a time: charjax-sample either
    samples (the file held none of the parameters: the record's line alone) or says the epoch
    is damaged, in one line; nothing a failed read left behind reaches stderr (three training
    seeds: which file holds what varies with the run)."""
    cfg = tiny_cfg.replace(epochs=2, hidden=64, layers=2, temperatures=(), seed=seed)
    run = tmp_path / "run"
    runner.train_run(cfg, run, log=quiet)
    done = subprocess.run([sys.executable, "-c", SWEEP, str(run)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    said = json.loads(done.stdout)
    assert said and any(code == 2 for code, _ in said.values())
    for case, (code, err) in said.items():
        assert err.count("\n") == 1, (case, err)
        if code == 2:
            assert "is damaged: " in err and "TensorStore" not in err, (case, err)


def test_failed_orbax_futures_are_not_logged_again_other_future_errors_are(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [DropUnretrievedOrbaxErrors()])

    def logged(error):
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(error)
        loop.close()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            del future
            gc.collect()
        return [r.getMessage() for r in caplog.records if r.name == "asyncio"]

    assert logged(ValueError("No space left on device [os_error_code='28']")) == []
    # a file of the save's temporary folder that an I/O error left unwritten, read back
    unwritten = (
        'NOT_FOUND: Error reading "a/.zarray" in OCDBT database at "2.orbax-checkpoint-tmp/"'
    )
    assert logged(ValueError(unwritten)) == []
    caplog.clear()
    other = logged(ValueError("a bug"))
    assert len(other) == 1 and other[0].startswith("Future exception was never retrieved")
    full = ValueError("No space left on device [os_error_code='28']")  # of asyncio.gather's
    gathered = logging.LogRecord("asyncio", logging.ERROR, "", 0, "_GatheringFuture exception "
                                 "was never retrieved", None, (ValueError, full, None))  # fmt: skip
    assert not DropUnretrievedOrbaxErrors().filter(gathered)
