"""End-to-end runs of scripts/*.py in subprocesses, as a user runs them (the many one-line
error cases once through the script, the rest through the same command in process)."""

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from charjax import cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test starts the scripts in subprocesses


def run(script: str, *args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _checkpoint_epochs(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_train_resume_and_sample_on_nietzsche(nietzsche_dir, tmp_path):
    ckpt = tmp_path / "run"
    first = run(
        "train.py",
        "--max-chars",
        6000,
        "--epochs",
        2,
        "--checkpoint-dir",
        ckpt,
        "--sample-length",
        40,
    )
    assert first.returncode == 0, first.stderr
    assert _checkpoint_epochs(ckpt) == [1, 2]
    lines = first.stdout.splitlines()
    assert any(line.startswith("epoch 1/2  loss ") and "windows/s" in line for line in lines)
    assert sum("----- temperature: " in line for line in lines) == 8  # 4 temperatures x 2 epochs

    resumed = run(
        "train.py", "--resume", "--epochs", 3, "--checkpoint-dir", ckpt, "--temperatures", ""
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch 2" in resumed.stdout and "epoch 3/3" in resumed.stdout
    assert _checkpoint_epochs(ckpt) == [1, 2, 3]

    args = ("--checkpoint-dir", ckpt, "--seed", 7, "--temperature", "0.2,1.0", "--length", 80)
    a, b = run("sample.py", *args), run("sample.py", *args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert len(a.stdout) == 2 * 81  # two texts of 80 chars, each followed by a newline
    listed = run("sample.py", *args, "--json")
    records = json.loads(listed.stdout)
    assert [r["temperature"] for r in records] == [0.2, 1.0]
    assert "".join(r["text"] + "\n" for r in records) == a.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    text = directory / "text.txt"
    text.write_text("a small text, written twice over. " * 20, encoding="utf-8")
    ckpt = directory / "ckpt"
    done = run(
        "train.py",
        "--text",
        text,
        "--epochs",
        1,
        "--maxlen",
        10,
        "--hidden",
        8,
        "--batch-size",
        16,
        "--checkpoint-dir",
        ckpt,
        "--temperatures",
        "",
    )
    assert done.returncode == 0, done.stderr
    return text, ckpt


def test_sample_modes_primes_and_unknown_chars(tiny_run):
    _, ckpt = tiny_run
    bad = run("sample.py", "--checkpoint-dir", ckpt, "--prime", "qz small", "--length", 5)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "'qz'" in bad.stderr and "--unknown skip" in bad.stderr
    skip = run(
        "sample.py",
        "--checkpoint-dir",
        ckpt,
        "--prime",
        "qz small",
        "--unknown",
        "skip",
        "--length",
        5,
        "--mode",
        "stateful",
        "--num-samples",
        2,
        "--top-k",
        3,
    )
    assert skip.returncode == 0, skip.stderr
    assert len(skip.stdout) == 2 * 6
    greedy = run(
        "sample.py",
        "--checkpoint-dir",
        ckpt,
        "--prime",
        "A",
        "--temperature",
        0,
        "--length",
        5,
        "--epoch",
        1,
    )
    assert greedy.returncode == 0 and len(greedy.stdout) == 6


def test_a_closed_pipe_ends_sampling_quietly(tiny_run):
    """`charjax-sample --length 100000 | head -c 200`: no message, the exit status of a Unix
    tool killed by SIGPIPE."""
    _, ckpt = tiny_run
    script = [sys.executable, str(REPO / "scripts" / "sample.py"), "--checkpoint-dir", str(ckpt)]
    with subprocess.Popen(
        [*script, "--length", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        head = process.stdout.read(200)
        process.stdout.close()  # like head: the reader goes away
        err = process.stderr.read().decode()
        assert process.wait(timeout=300) == 141, err
    assert len(head) == 200 and err.count("\n") == 1 and err.startswith("epoch 1, mode")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--temperature", "-1"], "temperature"),
        (["--temperature", "nan"], "temperature"),
        (["--epoch", "9"], "no checkpoint for epoch 9"),
        (["--length", "-5"], "length"),
    ],
)
def test_sample_errors_are_one_line(tiny_run, args, needle):
    _, ckpt = tiny_run
    result = run("sample.py", "--checkpoint-dir", ckpt, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


def test_train_errors_are_one_line(tiny_run, tmp_path, capsys):
    text, ckpt = tiny_run
    cases = [
        (["--text", text, "--batch-size", 0, "--checkpoint-dir", tmp_path / "a"], "--batch-size"),
        (
            ["--text", tmp_path / "missing.txt", "--checkpoint-dir", tmp_path / "b"],
            "does not exist",
        ),
        (["--text", text, "--checkpoint-dir", ckpt], "--resume"),
        (["--resume", "--hidden", 64, "--checkpoint-dir", ckpt], "--hidden 64"),
        (["--text", text, "--maxlen", 5000, "--checkpoint-dir", tmp_path / "c"], "--maxlen"),
    ]
    result = run("train.py", *cases[0][0])  # the script itself; the rest in process
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert cases[0][1] in result.stderr
    for args, needle in cases[1:]:
        assert cli.train_main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    assert cli.sample_main(["--checkpoint-dir", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_flags_with_defaults():
    train_help = run("train.py", "--help").stdout
    for flag in (
        "--text",
        "--max-chars",
        "--epochs",
        "--batch-size",
        "--maxlen",
        "--step",
        "--hidden",
        "--learning-rate",
        "--seed",
        "--checkpoint-dir",
        "--resume",
        "--keep",
        "--sample-length",
        "--temperatures",
        "--val-fraction",
        "--objective",
        "--carry-state",
        "--layers",
        "--dropout",
        "--clip-norm",
        "--optimizer",
        "--schedule",
        "--warmup",
        "--guard",
    ):
        assert flag in train_help
    assert "(default: 60)" in train_help and "0.2,0.5,1,1.2" in train_help
    assert "(default: 0.1)" in train_help and "(default: last)" in train_help
    score_help = run("score.py", "--help").stdout
    for flag in ("--checkpoint-dir", "--epoch", "--mode", "--stride", "--json"):
        assert flag in score_help
    sample_help = run("sample.py", "--help").stdout
    for flag in (
        "--checkpoint-dir",
        "--epoch",
        "--prime",
        "--length",
        "--temperature",
        "--seed",
        "--mode",
        "--num-samples",
        "--top-k",
        "--top-p",
        "--unknown",
    ):
        assert flag in sample_help


def test_metrics_log_appends_on_resume_and_plots(tiny_run, tmp_path):
    import shutil

    text, ckpt = tiny_run
    run_dir = tmp_path / "copy"
    shutil.copytree(ckpt, run_dir)
    before = (run_dir / "metrics.jsonl").read_text()
    assert len(before.splitlines()) == 1
    more = run("train.py", "--resume", "--epochs", 2, "--checkpoint-dir", run_dir, "--quiet")
    assert more.returncode == 0, more.stderr
    after = (run_dir / "metrics.jsonl").read_text()
    assert after.startswith(before)  # appended, never truncated
    records = [json.loads(line) for line in after.splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[1]) >= {"epoch", "loss", "seconds", "windows_per_s"}
    out = tmp_path / "curve.png"
    plotted = run("plot.py", "--checkpoint-dir", run_dir, "--out", out)
    assert plotted.returncode == 0, plotted.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    empty = run("plot.py", "--checkpoint-dir", tmp_path)
    assert empty.returncode == 2 and "train first" in empty.stderr


def test_progress_bar_on_a_terminal_plain_lines_elsewhere(tiny_text, tmp_path):
    import pty

    leader, follower = pty.openpty()
    args = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--text",
        str(tiny_text),
        "--epochs",
        "1",
        "--maxlen",
        "10",
        "--hidden",
        "8",
        "--batch-size",
        "16",
        "--steps-per-call",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "tty"),
        "--temperatures",
        "",
    ]
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, env=os.environ.copy())
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    screen = seen.decode(errors="replace")
    bar = re.search(r"\d+/\d+ · loss .* · [\d,]+ windows/s · \d+:\d\d:\d\d left", screen)
    assert bar and "epoch 1/1  loss" in screen, screen
    plain = run(
        "train.py", *args[2:-4], "--checkpoint-dir", tmp_path / "pipe", "--temperatures", ""
    )
    assert plain.returncode == 0 and " left" not in plain.stdout


def test_entry_points_are_installed():
    bindir = Path(sys.executable).parent
    for name in (
        "charjax-train",
        "charjax-sample",
        "charjax-plot",
        "charjax-score",
    ):
        done = subprocess.run([str(bindir / name), "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: " + name in done.stdout, name


def test_console_scripts_name_mains_of_the_installed_packages():
    """Every [project.scripts] entry is a callable of a module in the packages pyproject installs
    (so it works after a reinstall); the benchmarks are among them, as charjax-bench."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    entries = re.findall(r'^([\w-]+) = "([\w.]+):(\w+)"$', section, re.M)
    packages = re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*)\]$", text, re.M)[1])
    names = {name for name, _, _ in entries}
    assert {"charjax-train", "charjax-sweep", "charjax-bench"} <= names
    assert {"benchmarks", "benchmarks.peers", "charjax"} <= set(packages)
    for name, module, function in entries:
        assert module in packages or module.rpartition(".")[0] in packages, name
        assert callable(getattr(importlib.import_module(module), function)), name


def test_bench_script_finds_the_benchmarks_from_any_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: charjax-bench" in done.stdout and "--device-check" in done.stdout


def test_a_run_with_minutes_fills_its_budget_and_says_how_to_repeat_it(nietzsche_dir, tmp_path):
    """--minutes as a user runs it: the line with the chosen count, that many epochs, the
    whole command within the budget (plus the process's start, which the run does not see),
    and --resume of the finished run keeps the count."""
    import time

    ckpt = tmp_path / "run"
    t0 = time.perf_counter()
    done = run("train.py", "--max-chars", 20000, "--minutes", 0.5, "--checkpoint-dir", ckpt,
               "--quiet", "--temperatures", "")  # fmt: skip
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    chosen = re.search(r"0.5 minutes fit (\d+) epochs? of ~[\d.]+ s here \(after \d+ s of "
                       r"compiling and timing\); the same run again: --epochs (\d+)",
                       done.stdout)  # fmt: skip
    assert chosen and chosen.group(1) == chosen.group(2), done.stdout
    n = int(chosen.group(1))
    assert n >= 2 and _checkpoint_epochs(ckpt)[-1] == n
    assert wall < 30 * 1.25 + 10, f"{wall:.0f} s for a 30 s budget"
    again = run("train.py", "--resume", "--checkpoint-dir", ckpt)
    assert again.returncode == 0 and f"has done all its --epochs {n}" in again.stdout
