"""`metrics.jsonl`, a run's log: one JSON object per epoch, and with `--log-every` or
`--eval-every` one per so many optimizer steps (those have a "step"), only ever appended to (a
crash's torn line is closed, not joined). `RunDir` writes it; plots read it."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def _records(directory: str | Path):
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue


def read_metrics(directory: str | Path) -> list[dict]:
    """The epochs recorded in `directory/metrics.jsonl`, the last record of each epoch winning."""
    by_epoch = {r["epoch"]: r for r in _records(directory) if "step" not in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_steps(directory: str | Path) -> list[dict]:
    """The mid-epoch step records, by step, the last of each step winning (a resumed run
    records again the steps after its last save)."""
    by_step = {r["step"]: r for r in _records(directory) if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def append_metrics(directory: str | Path, record: dict) -> None:
    """Append one JSON line; a line left unfinished by a crash is closed first, not joined."""
    path = Path(directory) / METRICS_FILE
    with open(path, "a+b") as f:
        f.seek(0, 2)
        if f.tell() > 0:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
