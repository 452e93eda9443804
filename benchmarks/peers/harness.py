"""`charjax-bench --peers NAMES --rounds R`: charjax and each named peer, interleaved (A B C D
A B C D), each run a process of its own, then the medians and ratios of that one comparison with
the host they were measured on.

`schedule` orders the runs, `run_peer` starts one and reads its JSON line, `summarize` takes
the medians and the ratios against charjax, `table` prints them: all testable with a stand-in
peer (`Peer` of any module that prints the same line)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks.child import ROOT  # the repository: `python -m benchmarks...` runs here
from benchmarks.environment import cpu
from benchmarks.peers import PEERS, Peer
from charjax.errors import CharjaxError

INSTALL = "pip install -e '.[peers]'"


def peers_named(text: str) -> list[Peer]:
    """'torch,keras-tf' -> charjax first, then those peers; an unknown name is one line."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS or n == "charjax"]
    if unknown or not names:
        raise CharjaxError(
            f"--peers takes a comma list of {', '.join(n for n in PEERS if n != 'charjax')}, "
            f"got {text!r}"
        )
    return [PEERS["charjax"], *(PEERS[n] for n in dict.fromkeys(names))]


def schedule(peers: list[Peer], rounds: int) -> list[tuple[int, Peer]]:
    """Round by round, every peer once in each: A B C A B C (the host's drift falls on all)."""
    return [(r, peer) for r in range(1, rounds + 1) for peer in peers]


def run_peer(peer: Peer, steps: int, *, runner: Callable = subprocess.run) -> dict:
    """Run `peer` in a process of its own -> its JSON line (plus the run's wall seconds). A
    failure is one line naming the peer and the last line it wrote."""
    command = [sys.executable, "-m", peer.module, "--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), **peer.env}  # fmt: skip
    t0 = time.perf_counter()
    done = runner(command, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        last = next((ln for ln in reversed(done.stderr.strip().splitlines()) if ln.strip()), "")
        missing = "No module named" in last
        hint = f" (install the peers: {INSTALL})" if missing else ""
        raise CharjaxError(f"peer {peer.name} failed (exit {done.returncode}): {last}{hint}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise CharjaxError(f"peer {peer.name} printed no result line")
    return {**json.loads(lines[-1]), "wall_s": wall}


def summarize(results: dict[str, list[dict]]) -> dict:
    """Per peer: median training windows/s and 400-char sample ms over its rounds, each
    round's figures, and charjax's ratio to it (its speed-up: > 1 is charjax faster)."""
    out = {}
    for name, runs in results.items():
        rate = statistics.median(r["train_windows_per_s"] for r in runs)
        ms = statistics.median(r["sample_ms"] for r in runs)
        out[name] = {
            "train_windows_per_s": rate,
            "train_rounds": [r["train_windows_per_s"] for r in runs],
            "sample_ms": ms,
            "sample_rounds": [r["sample_ms"] for r in runs],
            "train_method": runs[-1]["train_method"],
            "sample_method": runs[-1]["sample_method"],
            "versions": runs[-1]["versions"],
        }
    ours = out.get("charjax")
    for entry in out.values():
        if ours is not None:
            entry["charjax_train_x"] = ours["train_windows_per_s"] / entry["train_windows_per_s"]
            entry["charjax_sample_x"] = entry["sample_ms"] / ours["sample_ms"]
    return out


def host() -> dict:
    """The machine: CPU model, cores, AVX-512 or not, Python, date."""
    model, avx512 = cpu()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512": avx512,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(summary: dict, machine: dict, peers: list[Peer], rounds: int) -> str:
    """The comparison as text: the host, then one row a peer (medians, charjax's ratios)."""
    avx = "with" if machine["avx512"] else "without"
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, {avx} AVX-512; Python "
        f"{machine['python']}; {machine['date']}; medians of {rounds} round(s), interleaved",
        f"{'peer':<24} {'train windows/s':>15} {'charjax x':>9} {'400 chars ms':>12} "
        f"{'charjax x':>9}  versions",
    ]
    for peer in peers:
        s = summary[peer.name]
        versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items()
                             if v and k != "python")  # fmt: skip
        lines.append(
            f"{peer.label:<24} {s['train_windows_per_s']:>15,.0f} "
            f"{s.get('charjax_train_x', 1):>9.2f} {s['sample_ms']:>12,.1f} "
            f"{s.get('charjax_sample_x', 1):>9.1f}  {versions}"
        )
    lines.append("methods:")
    for peer in peers:
        s = summary[peer.name]
        lines.append(f"  {peer.label}: train {s['train_method']}; sample {s['sample_method']}")
    return "\n".join(lines)


def compare(peers: list[Peer], rounds: int, steps: int, *, log=print,
            runner: Callable = subprocess.run) -> dict:  # fmt: skip
    """Run the schedule, say each run as it ends, and return the comparison: host, rounds,
    steps, each run's figures and the summary."""
    results: dict[str, list[dict]] = {p.name: [] for p in peers}
    for number, peer in schedule(peers, rounds):
        figures = run_peer(peer, steps, runner=runner)
        results[peer.name].append(figures)
        log(f"round {number}/{rounds} {peer.label}: {figures['train_windows_per_s']:,.0f} "
            f"windows/s, 400 chars in {figures['sample_ms']:,.1f} ms")  # fmt: skip
    machine = host()
    summary = summarize(results)
    log(table(summary, machine, peers, rounds))
    return {"host": machine, "rounds": rounds, "steps": steps, "runs": results,
            "peers": summary}  # fmt: skip
