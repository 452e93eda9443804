"""charjax's benchmarks, `charjax-bench` (`python scripts/bench.py` in a checkout): the peers,
training, sampling and memory of the default recipe (`measure`, `child`), a preset on one and on
all devices, big corpora (`scale`), the device check (`device_check`), all timed by `timing`."""
