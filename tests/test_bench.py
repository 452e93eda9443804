"""The prepared device check runs on CPU too (a few steps): it cannot rot before a GPU is lent."""

import json
import os

import pytest

from charjax.bench import gpu
from charjax.config import Config

pytestmark = pytest.mark.slow  # each trains real recipes on the corpus


def test_device_check_writes_its_json_on_cpu(nietzsche_dir, tmp_path):
    parts = ("environment", "default_float32", "peak_device_memory", "pytorch")
    result = gpu.check(tmp_path, quick=True, tests=False, only=parts)
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert set(saved) == set(parts) == set(result)
    run = saved["default_float32"]
    assert "error" not in run, run
    assert run["windows"] > 0 and run["windows_per_s"] > 0 and not run["whole_epoch"]
    assert run["epoch_s"] > 0 and saved["environment"]["versions"]["jax"]
    assert "peak_bytes_in_use" in saved["peak_device_memory"]


def test_preset_timing_trains_the_preset_with_its_masks(
    nietzsche_dir, tmp_path, capsys, monkeypatch
):
    """`charjax-bench --preset quality` (and the device check's epochs) time training as a run
    does: dropout and weight-drop drawn, the schedule over the run's steps; on one and on all
    devices, saying so."""
    import jax

    from charjax import bench, corpus, epoch, objective

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # bench.main asks for devices
    contexts, iterate = [], epoch.iterate

    def watched(*args, context, **kw):
        contexts.append(context)
        return iterate(*args, context=context, **kw)

    monkeypatch.setattr(epoch, "iterate", watched)
    recipe_b = Config(**gpu.RECIPE_B)
    gpu.train_epoch(recipe_b, 1)  # the device check's recipe B: masks too
    out = tmp_path / "preset.json"
    assert bench.main(["--preset", "quality", "--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["preset"] == "quality" and saved["preset_steps_per_repeat"] == 10
    counts = {"1", str(len(jax.devices()))}
    assert set(saved["preset_chars_per_s"]) == counts
    assert all(rate > 0 for rate in saved["preset_chars_per_s"].values())
    assert "chars/s on 1 device(s)" in capsys.readouterr().out
    assert len(contexts) == 1 + len(counts) and all(c.dropout_key is not None for c in contexts)
    split = corpus.split(corpus.load(recipe_b), recipe_b)
    batches = -(-objective.of(recipe_b).windows(split) // recipe_b.batch_size)
    assert int(contexts[0].total_steps) == recipe_b.epochs * batches > 0
