"""End to end: bad input gives one clear line; interrupted or killed runs lose no work and
resume exactly."""

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from util import same_trees

from charjax import cli, run_dir
from charjax.checkpoint import TMP_SUFFIX, Checkpoints
from charjax.run_dir import Meta
from charjax.step import init_state

REPO = Path(__file__).resolve().parents[1]
TINY = ["--maxlen", "10", "--hidden", "8", "--batch-size", "16", "--temperatures", ""]


def _one_line_error(capsys, code, main, argv, needle):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err


@pytest.fixture
def texts(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "empty.txt").write_bytes(b"")
    (d / "short.txt").write_text("too short")
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait ".encode("latin-1") * 10)
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "good.txt").write_text("a good enough text for a tiny model. " * 12)
    (d / "other.txt").write_text("quite another text, with other letters: xyzq! " * 12)
    (d / "file").write_text("not a directory")
    (d / "no-texts").mkdir()
    return d


def test_bad_training_inputs_are_one_line(capsys, texts, tmp_path):
    good, ck = texts / "good.txt", tmp_path / "ck"
    cases = [
        (["--text", texts / "missing.txt"], "does not exist"),
        (["--text", texts / "no-texts"], "holds no *.txt files"),
        (["--text", texts / "empty.txt"], "is empty"),
        (["--text", texts / "short.txt"], "fewer than --maxlen + 1"),
        (["--text", texts / "latin1.txt"], "not valid UTF-8 (bad byte at offset 3)"),
        (["--text", texts / "binary.bin"], "binary file (NUL byte at offset 0)"),
        (["--text", good, "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--text", good, "--maxlen", "0"], "--maxlen must be >= 1"),
        (["--text", good, "--step", "-1"], "--step must be >= 1"),
        (["--text", good, "--epochs", "-1"], "--epochs must be >= 1"),
        (["--text", good, "--learning-rate", "nan"], "--learning-rate must be a positive"),
        (["--text", good, "--temperatures", "0.5,-1"], "--temperatures must be finite"),
        (["--text", good, "--temperatures", "inf"], "--temperatures must be finite"),
        (["--text", good, "--checkpoint-dir", texts / "file" / "sub"], "cannot write checkpoints"),
        (["--resume", "--checkpoint-dir", tmp_path / "nothing"], "no run to resume in"),
    ]
    for argv, needle in cases:
        argv = [str(a) for a in argv]
        if "--checkpoint-dir" not in argv:
            argv += ["--checkpoint-dir", str(ck)]
        base = ["--epochs", "1", "--maxlen", "10", "--hidden", "8", "--temperatures", ""]
        _one_line_error(capsys, 2, cli.train_main, base + argv, needle)
    # usage errors are one line too
    _one_line_error(capsys, 2, cli.train_main, ["--batch-size", "abc"], "invalid int value")
    assert not list(ck.glob("[0-9]*"))  # nothing was trained or saved


def _train_tiny(capsys, text, directory) -> str:
    """One tiny epoch on `text` into `directory` (output swallowed) -> the directory."""
    argv = ["--text", str(text), "--epochs", "1", "--checkpoint-dir", str(directory), *TINY]
    assert cli.train_main(argv) == 0
    capsys.readouterr()
    return str(directory)


@pytest.mark.slow  # trains through the command, then resumes it four ways
def test_resume_checks_corpus_and_model(capsys, texts, tmp_path):
    ck = _train_tiny(capsys, texts / "good.txt", tmp_path / "ck")
    _one_line_error(
        capsys,
        2,
        cli.train_main,
        ["--resume", "--text", str(texts / "other.txt"), "--checkpoint-dir", ck],
        "not the one the checkpoint",
    )
    _one_line_error(
        capsys,
        2,
        cli.train_main,
        ["--resume", "--hidden", "32", "--checkpoint-dir", ck],
        "--hidden 32 (checkpoint has 8)",
    )
    # a directory another run holds is refused before any work
    held = run_dir.lock_directory(Path(ck))
    try:
        _one_line_error(
            capsys,
            2,
            cli.train_main,
            ["--resume", "--epochs", "2", "--checkpoint-dir", ck],
            "another training run",
        )
    finally:
        held.close()
    # sampling: missing or empty dir, absent epoch, bad numbers
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, needle in [
        (["--checkpoint-dir", str(tmp_path / "none")], "does not exist"),
        (["--checkpoint-dir", str(empty)], "no checkpoints in"),
        (["--checkpoint-dir", ck, "--epoch", "5"], "available: 1"),
        (["--checkpoint-dir", ck, "--length", "-5"], "length must be >= 0"),
        (["--checkpoint-dir", ck, "--temperature", "-0.5"], "temperature must be"),
        (["--checkpoint-dir", ck, "--temperature", "nan"], "temperature must be"),
        (["--checkpoint-dir", ck, "--top-p", "inf"], "expected a finite number"),
        (["--checkpoint-dir", ck, "--num-samples", "0"], "num-samples must be >= 1"),
    ]:
        _one_line_error(capsys, 2, cli.sample_main, argv, needle)


@pytest.mark.slow
def test_thousands_of_distinct_chars_work(capsys, tmp_path):
    chars = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 3000))  # CJK ideographs
    text = tmp_path / "cjk.txt"
    text.write_text(chars * 2, encoding="utf-8")
    ck = str(tmp_path / "ck")
    assert (
        cli.train_main(
            [
                "--text",
                str(text),
                "--epochs",
                "1",
                "--checkpoint-dir",
                ck,
                "--maxlen",
                "10",
                "--hidden",
                "8",
                "--batch-size",
                "64",
                "--temperatures",
                "",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.sample_main(["--checkpoint-dir", ck, "--length", "30", "--prime", chars[:5]]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert len(out) == 30 and set(out) <= set(chars)


def test_non_finite_loss_never_reaches_a_checkpoint(capsys, texts, tmp_path):
    ck = tmp_path / "ck"
    argv = [
        "--text",
        str(texts / "good.txt"),
        "--epochs",
        "2",
        "--learning-rate",
        "1e38",
        "--guard",
        "0",
        "--checkpoint-dir",
        str(ck),
        *TINY,
    ]
    _one_line_error(capsys, 2, cli.train_main, argv, "nothing was saved")
    assert Checkpoints(ck).epochs() == []


def _train_cmd(text, ck, epochs, *extra):
    return [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--text",
        str(text),
        "--epochs",
        str(epochs),
        "--checkpoint-dir",
        str(ck),
        "--steps-per-call",
        "1",
        "--quiet",
        *TINY,
        *extra,
    ]


def _final_params(ck):
    ckpts = Checkpoints(ck, create=False)
    meta = ckpts.meta()
    cfg = Meta.from_json(meta).cfg
    like = jax.eval_shape(lambda: init_state(jax.random.key(0), len(meta["vocab"]), cfg))
    return meta["epoch"], ckpts.restore(like)


@pytest.fixture
def long_text(tmp_path):
    path = tmp_path / "long.txt"
    rng = np.random.default_rng(0)
    words = ["the", "will", "to", "power", "is", "a", "truth", "woman", "philosopher", "and"]
    path.write_text(" ".join(rng.choice(words, 1500)) + ".", encoding="utf-8")
    return path


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_is_exact(long_text, tmp_path):
    slow = ("--batch-size", "8", "--step", "1")  # ~900 steps: epochs long enough to interrupt
    reference = subprocess.run(
        _train_cmd(long_text, tmp_path / "ref", 2, *slow),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr
    ck = tmp_path / "ck"
    proc = subprocess.Popen(
        _train_cmd(long_text, ck, 2, *slow),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (ck / "1").is_dir() and time.time() < deadline:  # epoch 1 saved: epoch 2 runs
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read()
    assert "interrupted: saved epoch 2 after" in err and "--resume" in err, err
    assert "Traceback" not in err
    assert Checkpoints(ck).epochs() == [1] and (ck / "partial").is_dir()
    done = subprocess.run(
        _train_cmd(long_text, ck, 2, "--resume", *slow), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "resuming inside epoch 2" in done.stdout
    assert not (ck / "partial").exists()
    (e1, ref), (e2, resumed) = _final_params(tmp_path / "ref"), _final_params(ck)
    assert e1 == e2 == 2 and same_trees(ref, resumed)


def _saving(ck, since: float) -> bool:
    """Whether a checkpoint is being written in `ck` right now: an orbax temporary folder made
    after `since` (older ones are a killed run's leftovers)."""
    for folder in (ck, ck / "partial"):
        try:
            for entry in os.scandir(folder):
                if TMP_SUFFIX in entry.name and entry.stat().st_mtime > since:
                    return True
        except OSError:
            pass
    return False


def _resume_flag(ck) -> list[str]:
    """--resume when `ck` holds a complete checkpoint (an epoch or an interrupted one)."""
    if not ck.is_dir():
        return []
    ckpts = Checkpoints(ck, create=False)  # reads only: leftovers are the program's to remove
    return ["--resume"] if ckpts.epochs() or ckpts.partial_meta() is not None else []


KILLS = 4  # the second and fourth inside a save (each kill and resume costs ~10 s on 2 cores)


@pytest.mark.slow
def test_kill_fuzz_many_sigkills_some_inside_saves_lose_nothing(long_text, tmp_path):
    """SIGKILL at 4 seeded random moments, every second one while a checkpoint is being
    written (the run saves every 3 steps); each time the run resumes, and it ends bit-identical
    to an uninterrupted one, with no half-written checkpoint left."""
    flags = ("--save-every", "3")
    reference = subprocess.run(
        _train_cmd(long_text, tmp_path / "ref", 2, *flags),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr
    ck, rng = tmp_path / "ck", random.Random(0)
    kills, inside_saves = 0, 0
    while kills < KILLS:
        resume, launched = _resume_flag(ck), time.time()
        proc = subprocess.Popen(
            _train_cmd(long_text, ck, 2, *flags, *resume),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        in_save = kills % 2 == 1  # this kill waits for a save to start
        deadline = time.time() + (60 if in_save else rng.uniform(2.0, 4.5))
        while time.time() < deadline and proc.poll() is None:
            if in_save and _saving(ck, launched):
                inside_saves += 1
                break
            time.sleep(0.001 if in_save else 0.05)
        if proc.poll() is not None:  # it finished before the kill: nothing left to fuzz
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == KILLS and inside_saves >= 2, (kills, inside_saves)
    resume = _resume_flag(ck)
    done = subprocess.run(
        _train_cmd(long_text, ck, 2, *flags, *resume), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    (e1, ref), (e2, resumed) = _final_params(tmp_path / "ref"), _final_params(ck)
    assert e1 == e2 == 2 and same_trees(ref, resumed)
    assert not [p for p in ck.iterdir() if "tmp" in p.name]  # no half-written checkpoint left


def test_odd_sampling_and_environment_inputs(capsys, texts, tmp_path, monkeypatch):
    import jax.numpy as jnp

    from charjax import sample

    noise = jnp.zeros((1, 3))
    tiny_t = sample.pick(
        noise, jnp.array([[10.0, 30.0, 5.0]]), jnp.array([2e-38]), jnp.int32(0), jnp.float32(1.0)
    )
    assert int(tiny_t[0]) == 1  # no overflow to inf, no wrong argmax
    ck = _train_tiny(capsys, texts / "good.txt", tmp_path / "ck")
    assert cli.sample_main(["--checkpoint-dir", ck, "--length", "0", "--temperature", "1,2"]) == 0
    assert capsys.readouterr().out == "\n\n"
    _one_line_error(
        capsys,
        2,
        cli.sample_main,
        ["--checkpoint-dir", ck, "--temperature", ","],
        "at least one number",
    )
    monkeypatch.setenv("CHARJAX_CPU_DEVICES", "two")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    _one_line_error(capsys, 2, cli.train_main, ["--checkpoint-dir", ck], "CHARJAX_CPU_DEVICES")


def test_a_damaged_epoch_is_one_line_for_every_command_that_reads_it(capsys, texts, tmp_path):
    run = tmp_path / "run"
    argv = ["--text", str(texts / "good.txt"), "--epochs", "1", "--keep-best", *TINY]
    assert cli.train_main([*argv, "--checkpoint-dir", str(run)]) == 0
    for path in (run / "1" / "state").glob("ocdbt.process_*/d/*"):
        path.write_bytes(path.read_bytes()[:64])  # cut short, as an unfinished copy leaves it
    for path in (run / "best" / "1" / "state").glob("ocdbt.process_*/d/*"):
        path.unlink()
    capsys.readouterr()
    said = "is damaged: a file of its params arrays is missing"  # (or cut short)
    ck = ["--checkpoint-dir", str(run)]
    for main, command in [
        (cli.sample_main, [*ck, "--length", "5"]),
        (cli.sample_main, [*ck, "--length", "5", "--best"]),
        (cli.score_main, [*ck, str(texts / "other.txt")]),
        (cli.score_main, [*ck, "--best"]),
        (cli.export_main, [*ck, "--json", str(tmp_path / "model.json")]),
    ]:
        _one_line_error(capsys, 2, main, command, said)
    assert not (tmp_path / "model.json").exists()


def _address_space(limit: int):
    """A child's address-space limit: an allocation past it fails at once, on any machine
    (without it, one with enough memory and overcommit would try to fill 57.6 GB)."""

    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return set_limit


@pytest.mark.slow
def test_a_model_too_big_for_memory_ends_in_one_line_naming_the_flags(texts, tmp_path):
    train = [sys.executable, "-c", "import sys; from charjax.cli import train_main; "
             "sys.exit(train_main(sys.argv[1:]))"]  # fmt: skip
    big = tmp_path / "big"
    argv = ["--text", str(texts / "good.txt"), "--hidden", "60000", "--maxlen", "10",
            "--epochs", "1", "--temperatures", "", "--checkpoint-dir", str(big)]  # fmt: skip
    done = subprocess.run(
        [*train, *argv], capture_output=True, text=True, timeout=300,
        preexec_fn=_address_space(16 << 30),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "charjax-train: error: out of memory allocating 57.6 GB (the model or batch does not "
        "fit the device); lower --hidden, --layers, --batch-size or --maxlen\n"
    )
    assert not big.exists()  # the folder it made is gone: nothing was saved
