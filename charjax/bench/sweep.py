"""`charjax-sweep` (also `scripts/sweep.py`): train several recipes side by side and tabulate
their held-out losses, one run per recipe with the same seed and flags apart from its own.

A recipes file holds one recipe a line, `name  --flag value ...` (`#` starts a comment); flags
after `--` on the command line go to every run. Runs are `charjax-train` child processes,
`--jobs` at a time (on one GPU they share it; on a CPU give them one job per core or less),
each in `OUT/<name>/` with its log in `OUT/<name>.log`. `OUT/sweep.json` gets every run's
per-epoch curve, best and last held-out loss and wall time as they finish, and the table is
printed at the end, best first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from charjax.metrics_log import read_metrics

# A child process: charjax-train with the given argv.
TRAIN = "import sys; from charjax.cli import train_main; sys.exit(train_main(sys.argv[1:]))"


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
        last = f"{r['last']:.4f}" if r["last"] is not None else ""
        train = f"{r['train_last']:.4f}" if r["train_last"] is not None else ""
        rows.append(f"| {name} | `{r['flags']}` | {best} | {last} | {train} | {r['wall_s']} |")
    return "\n".join(rows)


def sweep(recipes: list[Recipe], out: Path, common: list[str], jobs: int, log=print) -> dict:
    """Run every recipe (`jobs` at once) into `out`; -> {name: summary} (also in sweep.json)."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several runs share one GPU
    pending, running, results = list(recipes), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            recipe = pending.pop(0)
            directory = out / recipe.name
            argv = [*recipe.flags, *common, "--quiet", "--checkpoint-dir", str(directory)]
            with open(out / f"{recipe.name}.log", "w") as f:
                child = subprocess.Popen(
                    [sys.executable, "-c", TRAIN, *argv], stdout=f, stderr=subprocess.STDOUT,
                    env=env,
                )  # fmt: skip
            running[recipe.name] = (recipe, child, time.perf_counter())
            log(f"started {recipe.name}: {' '.join(recipe.flags)}")
        time.sleep(0.2)
        for name, (recipe, child, t0) in list(running.items()):
            if child.poll() is None:
                continue
            del running[name]
            results[name] = summary(recipe, out / name, time.perf_counter() - t0, child.returncode)
            r = results[name]
            log(f"finished {name} (exit {r['returncode']}, {r['wall_s']} s): best {r['best']} "
                f"at epoch {r['best_epoch']}, last {r['last']}")  # fmt: skip
            (out / "sweep.json").write_text(json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        prog="charjax-sweep", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("recipes", type=Path, help="recipes file: one `name --flag value ...` a line")
    p.add_argument("--out", type=Path, default=Path("sweep"), help="folder for the runs")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    p.add_argument("--only", help="comma list of recipe names to run (default: all)")
    args = p.parse_args(own)
    try:
        recipes = parse_recipes(args.recipes.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        p.error(f"{args.recipes}: {e}")
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {r.name for r in recipes})
        if unknown:
            p.error(f"--only: no recipe named {', '.join(unknown)} in {args.recipes}")
        recipes = [r for r in recipes if r.name in names]
    results = sweep(recipes, args.out, common, max(1, args.jobs))
    print(table(results))
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1
