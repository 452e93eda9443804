"""`charjax-sweep` (also `scripts/sweep.py`): train several recipes side by side and tabulate
their held-out losses, one run per recipe with the same seed and flags apart from its own.

A recipes file holds one recipe a line, `name  --flag value ...` (`#` starts a comment); flags
after `--` on the command line go to every run. Runs are `charjax-train` child processes,
`--jobs` at a time (on one GPU they share it; on a CPU give them one job per core or less),
each in `OUT/<name>/` with its log in `OUT/<name>.log`. `OUT/sweep.json` gets every run's
per-epoch curve, best and last held-out loss and wall time as they finish, and the table is
printed at the end, best first. `--time-limit` (or Ctrl-C) stops the runs still going, each
saving its epoch in progress, and tabulates how far they got.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from charjax.cli import train_command
from charjax.cli.common import Parser, run
from charjax.errors import CharjaxError
from charjax.metrics_log import read_metrics

STOP_WAIT_S = 120  # for a stopped child to save its epoch in progress, then it is killed


@dataclass(frozen=True)
class Recipe:
    name: str
    flags: tuple[str, ...]


def parse_recipes(text: str) -> list[Recipe]:
    """`name --flag value ...` lines -> recipes (blank lines and `#` comments skipped)."""
    recipes, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name = words[0]
        if name.startswith("-") or "/" in name or name in seen:
            raise ValueError(
                f"line {number}: {name!r} is not a new recipe name: start each line with a "
                "name of its own (letters, digits, - or _), then its flags"
            )
        seen.add(name)
        recipes.append(Recipe(name, tuple(words[1:])))
    return recipes


def summary(recipe: Recipe, directory: Path, wall: float, returncode: int) -> dict:
    """One finished run: its curve (epoch, training and held-out loss, seconds) and figures."""
    curve = [
        {k: m.get(k) for k in ("epoch", "loss", "val_loss", "val_loss_raw", "seconds")}
        for m in read_metrics(directory)
    ]
    scored = [c for c in curve if c["val_loss"] is not None]
    best = min(scored, key=lambda c: c["val_loss"], default=None)
    return {
        "flags": " ".join(recipe.flags),
        "returncode": returncode,
        "wall_s": round(wall, 1),
        "epochs": len(curve),
        "best": best and best["val_loss"],
        "best_epoch": best and best["epoch"],
        "last": scored[-1]["val_loss"] if scored else None,
        "train_last": curve[-1]["loss"] if curve else None,
        "curve": curve,
    }


def table(results: dict) -> str:
    """Markdown table of the results, lowest best held-out loss first (failed runs last)."""
    rows = ["| recipe | flags | best held-out (epoch) | last | training loss | wall s |",
            "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    order = sorted(results.items(), key=lambda kv: (kv[1]["best"] is None, kv[1]["best"] or 0))
    for name, r in order:
        best = f"{r['best']:.4f} ({r['best_epoch']})" if r["best"] is not None else "failed"
        if r.get("cut"):
            best += f", cut at epoch {r['epochs']}"
        last = f"{r['last']:.4f}" if r["last"] is not None else ""
        train = f"{r['train_last']:.4f}" if r["train_last"] is not None else ""
        rows.append(f"| {name} | `{r['flags']}` | {best} | {last} | {train} | {r['wall_s']} |")
    return "\n".join(rows)


def sweep(
    recipes: list[Recipe], out: Path, common: list[str], jobs: int, time_limit=None, log=print
) -> dict:
    """Run every recipe (`jobs` at once) into `out`; -> {name: summary} (also in sweep.json).

    After `time_limit` seconds (or on Ctrl-C) the running children are asked to stop (SIGINT:
    each saves its epoch in progress and ends) and summed up marked `cut`; recipes not yet
    started are left out. So a sweep on a machine held for a fixed time ends with its table."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several runs share one GPU
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    pending, running, results = list(recipes), {}, {}

    def finish(name, cut=False):
        recipe, child, t0 = running.pop(name)
        results[name] = summary(recipe, out / name, time.perf_counter() - t0, child.returncode)
        results[name]["cut"] = cut
        r = results[name]
        log(f"{'cut' if cut else 'finished'} {name} (exit {r['returncode']}, {r['wall_s']} s): "
            f"best {r['best']} at epoch {r['best_epoch']}, last {r['last']}")  # fmt: skip
        (out / "sweep.json").write_text(json.dumps(results, indent=1))

    try:
        while pending or running:
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError
            while pending and len(running) < jobs:
                recipe = pending.pop(0)
                directory = out / recipe.name
                argv = [*recipe.flags, *common, "--quiet", "--checkpoint-dir", str(directory)]
                with open(out / f"{recipe.name}.log", "w") as f:
                    child = subprocess.Popen(
                        train_command(argv), stdout=f, stderr=subprocess.STDOUT, env=env
                    )
                running[recipe.name] = (recipe, child, time.perf_counter())
                log(f"started {recipe.name}: {' '.join(recipe.flags)}")
            time.sleep(0.2)
            for name, (_, child, _) in list(running.items()):
                if child.poll() is not None:
                    finish(name)
    except (TimeoutError, KeyboardInterrupt) as stop:
        why = "the time limit" if isinstance(stop, TimeoutError) else "Ctrl-C"
        unstarted = ", ".join(r.name for r in pending) or "none"
        log(f"stopping at {why}: {len(running)} runs asked to save and stop, "
            f"{len(pending)} not started ({unstarted})")  # fmt: skip
        for _, child, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
        for name, (_, child, _) in list(running.items()):
            try:
                child.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            finish(name, cut=True)
    return results


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="charjax-sweep", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("recipes", type=Path, help="recipes file: one `name --flag value ...` a line")
    p.add_argument("--out", type=Path, default=Path("sweep"), help="folder for the runs")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    p.add_argument("--only", help="comma list of recipe names to run (default: all)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after this many seconds, stop the running runs (each saves its epoch in progress) "
        "and tabulate what they reached, marked cut; recipes not started are left out "
        "(default: none)",
    )
    return p


def main(argv=None) -> int:
    """The command (the flags after `--` go to every run); every failure one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    return run(lambda args: _main(args, common), parser(), own)


def _main(args: argparse.Namespace, common: list[str]) -> int:
    try:
        recipes = parse_recipes(args.recipes.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CharjaxError(f"{args.recipes}: {getattr(e, 'strerror', None) or e}") from e
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {r.name for r in recipes})
        if unknown:
            raise CharjaxError(f"--only: no recipe named {', '.join(unknown)} in {args.recipes}")
        recipes = [r for r in recipes if r.name in names]
    results = sweep(recipes, args.out, common, max(1, args.jobs), args.time_limit)
    print(table(results))
    return 0 if all(r["returncode"] == 0 or r.get("cut") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
