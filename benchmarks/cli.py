"""`charjax-bench` (also `python scripts/bench.py`): training windows/s, compile time, sampling
latency and peak memory of the default recipe, optionally beside Keras 3; or charjax beside its
peers (PyTorch, Keras 3 on TensorFlow and on JAX), interleaved; or a preset's training speed on
one and on all devices; or each cell's training speed; or start-up time and peak memory on big
corpora; or the device check.

Timings are medians of repeats measured in one process, compile time apart (`timing`,
`measure`); the peak-RSS run and the Keras baseline run in child processes (`child`) so that
neither disturbs the in-process numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from charjax import parallel
from charjax.cli.common import Parser, run
from charjax.config import PRESETS
from charjax.errors import CharjaxError


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="charjax-bench",
        description=__doc__.split("\n\n")[0].replace("\n", " ").replace("`", ""),
    )
    p.add_argument("--quick", action="store_true", help="a < 60 s version with fewer steps")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--baseline", choices=("keras",), help="also time Keras 3 (JAX backend)")
    p.add_argument(
        "--peers",
        metavar="NAME,...",
        help="instead: charjax beside these peers (torch, keras-tf, keras-jax: the original "
        "recipe as each framework's user writes it, benchmarks/peers/), each run a process of "
        "its own, interleaved; medians and charjax's ratios with the host (needs pip install "
        "-e '.[peers]')",
    )
    p.add_argument("--rounds", type=int, default=2, help="with --peers: runs of each (default: 2)")
    p.add_argument(
        "--steps",
        type=int,
        default=100,
        help="with --peers: timed optimizer steps in each run (default: 100)",
    )
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
        help="instead: the prepared device check (scripts/gpu_check.sh): device tests, "
        "whole-epoch timings in float32 and bfloat16, sampling, the long-streams preset, "
        "device memory, PyTorch; all into DIR/device_check.json (with --quick: a few steps of "
        "each, no tests)",
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
        "--cells",
        action="store_true",
        help="instead: training chars/s of --preset quality with each --cell, and with the "
        "LSTM-shaped cells trained through autodiff (--lstm-kernel autodiff), in rounds, in "
        "one process",
    )
    p.add_argument(
        "--parts",
        metavar="NAME,...",
        help="with --device-check: only these parts (names as in device_check.json)",
    )
    return p


def main(argv=None) -> int:
    """The command: every failure one line on stderr (`--debug`: the traceback)."""
    return run(bench, parser(), sys.argv[1:] if argv is None else argv)


def bench(args: argparse.Namespace) -> int:
    if args.peers:
        return peers(args)
    if args.corpus_chars:
        from benchmarks import scale
        from benchmarks.environment import environment

        sizes = [int(float(n)) for n in args.corpus_chars.split(",") if n.strip()]
        results = {**environment(), "corpus_scale": scale.run(sizes, args.corpus_dir)}
        _write(args.json, results)
        return 0
    parallel.request_cpu_devices()  # before jax starts its backends
    parallel.tune_host_malloc()
    if args.device_check:
        from benchmarks import device_check

        only = args.parts.split(",") if args.parts else None
        device_check.check(Path(args.device_check), args.quick, not args.quick, only)
        return 0
    results = cells(args) if args.cells else preset(args) if args.preset else default(args)
    _write(args.json, results)
    return 0


def peers(args) -> int:
    """--peers: charjax and the named peers interleaved, in processes of their own."""
    from benchmarks.peers import harness

    chosen = harness.peers_named(args.peers)
    if args.rounds < 1 or args.steps < 10:
        raise CharjaxError(
            f"--rounds must be >= 1 and --steps >= 10, got {args.rounds} and {args.steps}"
        )
    _write(args.json, harness.compare(chosen, args.rounds, args.steps,
                                      log=lambda line: print(line, flush=True)))  # fmt: skip
    return 0


def preset(args) -> dict:
    """--preset NAME: the preset's training chars/s on one and on all devices."""
    from benchmarks import measure
    from benchmarks.environment import environment

    steps, repeats = (10, 2) if args.quick else (100, 5)
    results = {**environment(), **measure.bench_preset(args.preset, steps, repeats)}
    rates = results["preset_chars_per_s"]
    print(
        f"--preset {args.preset}: "
        + ", ".join(f"{rate:,.0f} chars/s on {n} device(s)" for n, rate in rates.items())
        + f"; medians of {repeats} x {steps} steps, alternating",
        flush=True,
    )
    return results


def cells(args) -> dict:
    """--cells: --preset quality's training chars/s with each cell."""
    from benchmarks import measure
    from benchmarks.environment import environment

    steps, repeats = (10, 2) if args.quick else (30, 3)
    results = {**environment(), **measure.bench_cells(steps, repeats)}
    for name, rate in results["cells_chars_per_s"].items():
        print(f"--preset quality, {name}: {rate:,.0f} chars/s", flush=True)
    print(f"medians of {repeats} x {steps} steps, in rounds", flush=True)
    return results


def default(args) -> dict:
    """The default recipe: training, sampling, peak RSS, and the Keras baseline if asked."""
    from benchmarks import child, measure
    from benchmarks.environment import environment

    results = environment()
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
        print(f"sample 400 chars, {name}: {r['ms']:.1f} ms (compile {r['compile_s']:.2f} s)",
              flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        results.update(child.training_memory(40 if args.quick else 0, tmp))
    print(f"peak RSS, full-corpus training ({results['peak_rss_run']}): "
          f"{results['peak_rss_mb']:,.0f} MB", flush=True)  # fmt: skip
    if args.baseline == "keras":
        keras = child.keras(steps)
        results.update(keras)
        results["speedup_vs_keras"] = results["train_windows_per_s"] / keras["keras_windows_per_s"]
        print(f"keras 3 (jax backend): {keras['keras_windows_per_s']:,.0f} windows/s; "
              f"charjax is {results['speedup_vs_keras']:.2f}x", flush=True)  # fmt: skip
    return results


def _write(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
