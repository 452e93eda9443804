"""The prepared device check runs on CPU too (a few steps): it cannot rot before a GPU is lent."""

import json

from charjax.bench import gpu


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
