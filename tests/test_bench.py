"""The prepared device check runs on CPU too (a few steps): it cannot rot before a GPU is lent."""

import json

from charjax.bench import gpu
from charjax.config import Config


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
    """`charjax-bench --preset quality` times the preset's own training (dropout and
    weight-drop drawn, as in a run) on one and on all devices, and says so."""
    from charjax import bench, epoch

    contexts, iterate = [], epoch.iterate

    def watched(*args, context, **kw):
        contexts.append(context)
        return iterate(*args, context=context, **kw)

    monkeypatch.setattr(epoch, "iterate", watched)
    gpu.train_epoch(Config(**gpu.RECIPE_B), 1)  # the device check's recipe B: masks too
    out = tmp_path / "preset.json"
    assert bench.main(["--preset", "quality", "--quick", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["preset"] == "quality" and saved["preset_steps_per_repeat"] == 10
    assert set(saved["preset_chars_per_s"]) == {"1"} and saved["preset_chars_per_s"]["1"] > 0
    assert "chars/s on 1 device(s); medians of 2 x 10 steps" in capsys.readouterr().out
    assert len(contexts) == 2 and all(c.dropout_key is not None for c in contexts)
