"""The benchmarks (`benchmarks/`, run by scripts/bench.py): the timing helper, the child
processes, the preset timings, and the device check on CPU (a few steps), so that it cannot rot
between runs on an accelerator."""

import json
import os
import sys

import pytest

from benchmarks import child, cli, device_check, timing
from charjax.config import PRESETS, Config


def test_time_calls_times_the_first_call_apart_and_sums_the_work_of_each_repeat():
    calls, synced = [], []

    def fn():
        calls.append(len(calls))
        return calls[-1]

    timed = timing.time_calls(fn, 3, calls=4, sync=synced.append, work=lambda r: 10 * r)
    assert calls == list(range(13)) and timed.calls == 4 and timed.result == 12
    assert synced == [0, 4, 8, 12]  # the first call, then each repeat's last
    assert timed.work == (10 * (1 + 2 + 3 + 4), 10 * (5 + 6 + 7 + 8), 10 * (9 + 10 + 11 + 12))
    assert len(timed.seconds) == 3 and all(s >= 0 for s in timed.seconds)


def test_timing_figures_are_medians_and_compile_is_the_first_call_less_a_warm_one():
    timed = timing.Timing(first_s=2.5, seconds=(1.0, 4.0, 2.0), work=(10, 10, 40), calls=4)
    assert timed.median_s == 2.0 and timed.rates == [10.0, 2.5, 20.0] and timed.rate == 10.0
    assert timed.compile_s == pytest.approx(2.5 - 2.0 / 4)
    assert timing.Timing(0.1, (1.0,), (1,), 1).compile_s == 0.0  # never negative


def test_time_rounds_alternates_the_functions_after_a_first_call_of_each():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    timings = timing.time_rounds(fns, 2, calls=2, sync=lambda _: None)
    assert order == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert all(t.work == (2, 2) for t in timings.values())


@pytest.mark.slow
def test_a_child_reports_its_stdout_and_its_own_peak_memory():
    big = "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); print('done')"
    big += "; import time; time.sleep(0.5)"  # held long enough to be seen by the polling
    out, peak_mb = child.run([sys.executable, "-c", big])
    small_out, small_mb = child.run([sys.executable, "-c", "print('small')"])
    assert out == "done\n" and small_out == "small\n"
    assert peak_mb > 300 > small_mb
    with pytest.raises(SystemExit, match="ZeroDivisionError"):
        child.run([sys.executable, "-c", "1 / 0"])


@pytest.mark.slow
def test_device_check_writes_its_json_on_cpu(nietzsche_dir, tmp_path):
    parts = ("environment", "default_float32", "peak_device_memory", "pytorch")
    result = device_check.check(tmp_path, quick=True, tests=False, only=parts)
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert set(saved) == set(parts) == set(result)
    run = saved["default_float32"]
    assert "error" not in run, run
    assert run["windows"] > 0 and run["windows_per_s"] > 0 and not run["whole_epoch"]
    assert run["epoch_s"] > 0 and saved["environment"]["versions"]["jax"]
    assert "peak_bytes_in_use" in saved["peak_device_memory"]


def test_device_check_refuses_a_part_it_does_not_have(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main asks for devices
    code = cli.main(["--device-check", str(tmp_path / "out"), "--parts", "sampling,no_such_part"])
    assert code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err
    assert err.startswith("charjax-bench: error: ") and err.count("\n") == 1
    assert "no part named no_such_part" in err and "long_streams" in err


@pytest.mark.slow
def test_preset_timing_trains_the_preset_with_its_masks(
    nietzsche_dir, tmp_path, capsys, monkeypatch
):
    """`scripts/bench.py --preset quality` (and the device check's epochs) time training as a
    run does: dropout and weight-drop drawn, the schedule over the run's steps; on one and on
    all devices, saying so."""
    import jax

    from charjax import corpus, epoch, objective

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main asks for devices
    contexts, iterate = [], epoch.iterate

    def watched(*args, context, **kw):
        contexts.append(context)
        return iterate(*args, context=context, **kw)

    monkeypatch.setattr(epoch, "iterate", watched)
    long_streams = Config(**PRESETS["long-streams"])
    device_check.train_epoch(long_streams, 1)  # the device check's long-streams part: masks too
    out = tmp_path / "preset.json"
    assert cli.main(["--preset", "quality", "--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["preset"] == "quality" and saved["preset_steps_per_repeat"] == 10
    counts = {"1", str(len(jax.devices()))}
    assert set(saved["preset_chars_per_s"]) == counts
    assert all(rate > 0 for rate in saved["preset_chars_per_s"].values())
    assert "chars/s on 1 device(s)" in capsys.readouterr().out
    assert len(contexts) == 1 + len(counts) and all(c.dropout_key is not None for c in contexts)
    split = corpus.split(corpus.load(long_streams), long_streams)
    batches = -(-objective.of(long_streams).windows(split) // long_streams.batch_size)
    assert int(contexts[0].total_steps) == long_streams.epochs * batches > 0


@pytest.mark.slow
def test_cell_timing_trains_each_cell_of_the_preset(nietzsche_dir, tmp_path, capsys, monkeypatch):
    """`scripts/bench.py --cells` times --preset quality with each variant of `CELL_VARIANTS`
    (here two of them), each training its own cell."""
    from benchmarks import measure

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main asks for devices
    two = {name: measure.CELL_VARIANTS[name] for name in ("lstm, autodiff", "lnlstm")}
    monkeypatch.setattr(measure, "CELL_VARIANTS", two)
    trained, init_state = [], measure.step.init_state

    def watched(key, vocab_size, cfg):
        trained.append(cfg)
        return init_state(key, vocab_size, cfg)

    monkeypatch.setattr(measure.step, "init_state", watched)
    out = tmp_path / "cells.json"
    assert cli.main(["--cells", "--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["cells_chars_per_s"]) == set(two)
    assert all(rate > 0 for rate in saved["cells_chars_per_s"].values())
    assert [(c.cell, c.lstm_kernel) for c in trained] == [("lstm", "autodiff"), ("lnlstm", "auto")]
    assert "--preset quality, lnlstm: " in capsys.readouterr().out
