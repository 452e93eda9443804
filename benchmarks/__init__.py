"""charjax's benchmarks, run from a checkout by `python scripts/bench.py` (not installed):
training, sampling and memory of the default recipe (`measure`, `child`), a preset on one and on
all devices, big corpora (`scale`), the device check (`device_check`), all timed by `timing`."""
