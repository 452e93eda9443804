"""`charjax-bench` (also `scripts/bench.py`): training windows/s, compile time, sampling
latency and peak memory of the default recipe, optionally beside Keras 3; or, with
--corpus-chars, start-up time and peak memory on big corpora.

Timings are medians of repeats measured in one process, compile time apart (`measure`); the
peak-RSS run and the Keras baseline run in child processes (`child`) so that neither disturbs
the in-process numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata

from charjax import parallel
from charjax.config import PRESETS


def environment() -> dict:
    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
        "jax_devices": len(jax.devices()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="charjax-bench",
        description=__doc__.split("\n\n")[0].replace("\n", " ").replace("`", ""),
    )
    p.add_argument("--quick", action="store_true", help="a < 60 s version with fewer steps")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--baseline", choices=("keras",), help="also time Keras 3 (JAX backend)")
    p.add_argument(
        "--corpus-chars",
        metavar="N,...",
        help="instead: start-up time and peak RSS of charjax-train on Nietzsche repeated to each "
        "of these sizes (e.g. 600000,10000000,100000000)",
    )
    p.add_argument(
        "--corpus-dir", metavar="DIR", help="keep the --corpus-chars texts here (default: temp)"
    )
    p.add_argument(
        "--device-check",
        metavar="DIR",
        help="instead: the prepared GPU check (issue 15; scripts/gpu_check.sh): device tests, "
        "whole-epoch timings in float32 and bfloat16, sampling, recipe B, device memory, PyTorch; "
        "all into DIR/device_check.json (with --quick: a few steps of each, no tests)",
    )
    p.add_argument(
        "--preset",
        metavar="NAME",
        choices=tuple(PRESETS),
        help="instead: training chars/s of this charjax-train preset on one and on all of the "
        "process's devices, alternating, in one process (a lead for CHARJAX_CPU_DEVICES; "
        "separate processes can differ)",
    )
    p.add_argument(
        "--parts",
        metavar="NAME,...",
        help="with --device-check: only these parts (names as in device_check.json)",
    )
    args = p.parse_args(argv)
    if args.device_check:
        parallel.request_cpu_devices()
        parallel.tune_host_malloc()
        from pathlib import Path

        from charjax.bench import gpu

        only = args.parts.split(",") if args.parts else None
        gpu.check(Path(args.device_check), quick=args.quick, tests=not args.quick, only=only)
        return 0
    if args.corpus_chars:
        from charjax.bench import scale

        sizes = [int(float(n)) for n in args.corpus_chars.split(",") if n.strip()]
        results = {**environment(), "corpus_scale": scale.run(sizes, args.corpus_dir)}
        _write(args.json, results)
        return 0
    parallel.request_cpu_devices()
    parallel.tune_host_malloc()
    from charjax.bench import child, measure

    results = environment()
    if args.preset:
        steps, repeats = (10, 2) if args.quick else (100, 5)
        results.update(measure.bench_preset(args.preset, steps, repeats))
        rates = results["preset_chars_per_s"]
        print(
            f"--preset {args.preset}: "
            + ", ".join(f"{rate:,.0f} chars/s on {n} device(s)" for n, rate in rates.items())
            + f"; medians of {repeats} x {steps} steps, alternating",
            flush=True,
        )
        _write(args.json, results)
        return 0
    steps, repeats = (60, 3) if args.quick else (300, 3)
    results.update(measure.bench_train(steps, repeats))
    print(
        f"train: {results['train_windows_per_s']:,.0f} windows/s "
        f"({results['train_s_per_epoch']:.1f} s/epoch) on {results['devices']} device(s), "
        f"median of {repeats} x {results['train_steps_per_repeat']} steps; "
        f"compile {results['compile_s']:.2f} s",
        flush=True,
    )
    results.update(measure.bench_sample(repeats=5))
    for name, r in results["sample_ms"].items():
        print(
            f"sample 400 chars, {name}: {r['ms']:.1f} ms (compile {r['compile_s']:.2f} s)",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        memory = child.run(["train", str(40 if args.quick else 0), tmp])
    results.update({"peak_rss_mb": memory["child_peak_rss_mb"], "peak_rss_run": memory["run"]})
    print(
        f"peak RSS, full-corpus training ({results['peak_rss_run']}): "
        f"{results['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    if args.baseline == "keras":
        # The child gets JAX's default device setup, as a plain Keras user would.
        flags = os.environ.get("XLA_FLAGS", "").split()
        plain = " ".join(f for f in flags if not f.startswith(parallel.DEVICE_COUNT_FLAG))
        keras = child.run(["keras", str(steps)], env={"XLA_FLAGS": plain})
        results.update({k: v for k, v in keras.items() if k.startswith("keras")})
        ratio = results["train_windows_per_s"] / keras["keras_windows_per_s"]
        results["speedup_vs_keras"] = ratio
        print(
            f"keras 3 (jax backend): {keras['keras_windows_per_s']:,.0f} windows/s; "
            f"charjax is {ratio:.2f}x",
            flush=True,
        )
    _write(args.json, results)
    return 0


def _write(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
