"""What the libraries' errors say (`charjax.orbax_errors`), read from messages of the shapes
orbax, TensorStore and jax raise (the reports built on it are tested in test_integrity and
test_cli)."""

import errno
import os

from charjax import orbax_errors as oe

READING = 'Error reading "{}/0" in OCDBT database at local file "/tmp/ck/1/state/"'


def _caused(outer: Exception, inner: Exception) -> Exception:
    outer.__cause__ = inner
    return outer


def test_the_os_error_is_found_in_the_chain_or_in_tensorstores_code():
    assert oe.os_error(_caused(ValueError("wrapped"), PermissionError(13, "Permission denied")))
    wrapped = ValueError("UNKNOWN: " + READING.format("params.dense.bias") + "[os_error_code='5']")
    assert oe.os_error(wrapped) == os.strerror(errno.EIO)
    assert oe.os_error(ValueError("no such words here")) is None
    gone = FileNotFoundError("Checkpoint at /run/2 not found.")  # orbax's, without an errno
    assert oe.os_error(_caused(ValueError("restore"), gone)) == os.strerror(errno.ENOENT)


def test_a_read_failure_names_its_part_and_how_it_failed():
    cut = oe.Unread(ValueError("OUT_OF_RANGE: " + READING.format("params.lstm.kernel")))
    assert (cut.part, cut.cut, cut.missing, cut.record) == ("params", True, False, False)
    gone = oe.Unread(_caused(ValueError("restore failed"), ValueError("NOT_FOUND: opt_state")))
    assert gone.missing and gone.part is None
    assert oe.Unread(ValueError("Error reading meta/metadata")).record


def test_statuses_the_runtime_and_out_of_memory_are_told_apart():
    assert oe.has_status(ValueError("DATA_LOSS: bad bytes"))
    assert not oe.has_status(ValueError("Missing key: structure"))
    refused = _caused(ValueError("restore"), RuntimeError("random_device could not be read\nx"))
    assert oe.runtime_refused(refused) == "RuntimeError: random_device could not be read"
    file_problem = _caused(RuntimeError("x"), ValueError("DATA_LOSS: y"))
    assert oe.runtime_refused(file_problem) is None
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 57600000000 bytes.")
    assert oe.out_of_memory(_caused(ValueError("restore"), oom)) is oom
    assert oe.asked_bytes(oom) == 57_600_000_000 and oe.out_of_memory(ValueError("x")) is None


def test_orbax_leftovers_are_known_and_others_are_not():
    assert oe.orbax_leftover(RuntimeError("Event loop is closed"))
    assert not oe.orbax_leftover(RuntimeError("something else"))
    assert oe.failed_save_or_read(ValueError("No space left on device [os_error_code='28']"))
    assert oe.failed_save_or_read(ValueError(f"writing 3{oe.TMP_SUFFIX}/state failed"))
    assert not oe.failed_save_or_read(ValueError("a bug"))
    # a read a failed restore abandoned (its future's error, raised outside orbax's reader)
    assert oe.failed_save_or_read(ValueError("OUT_OF_RANGE: " + READING.format("params.lstm")))
    assert oe.UNRETRIEVED.match("_GatheringFuture exception was never retrieved")
    assert oe.UNAWAITED.fullmatch("coroutine 'Foo.bar' was never awaited").group(1) == "Foo.bar"
    assert not oe.orbax_coroutine("not_a_module_function")


def test_the_errors_of_abandoned_reads_are_retrieved_and_others_left_alone():
    import asyncio
    import gc

    loop = asyncio.new_event_loop()
    read, other = loop.create_future(), loop.create_future()
    read.set_exception(ValueError("OUT_OF_RANGE: " + READING.format("params.dense.bias")))
    other.set_exception(ValueError("a bug of someone else's"))
    loop.close()
    assert oe.retrieve_abandoned_reads() >= 1
    assert not read._log_traceback and other._log_traceback  # only the read is retrieved
    other.exception()  # (retrieved here: the test leaves nothing to be logged)
    del read, other
    gc.collect()
