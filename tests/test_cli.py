"""The commands in process: flags generated from the config, no abbreviations, named groups;
the divergence guard's one-line ending, scoring, and sampling a sequence model."""

import dataclasses
import io
import json
import logging
import subprocess
import sys
import threading
import types
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import pytest
from util import orbax_like, quiet

from charjax import cli, guard, inference, runner, step
from charjax.checkpoint import Checkpoints
from charjax.cli.process import quiet_process
from charjax.config import Config, flag


def _tiny_run(cfg, directory, **kw):
    return runner.train_run(cfg, directory, log=quiet, **kw)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_guard_off_or_hopeless_ends_with_one_line(capsys, tiny_text, tmp_path):
    base = ["--text", str(tiny_text), "--maxlen", "10", "--hidden", "8", "--temperatures", ""]
    argv = [*base, "--learning-rate", "1e38", "--epochs", "1", "--checkpoint-dir"]
    assert cli.train_main([*argv, str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"still after {guard.MAX_CUTS} restarts" in err
    assert Checkpoints(tmp_path / "a").epochs() == []


@pytest.mark.slow
def test_score_command(tiny_cfg, tmp_path, capsys, monkeypatch):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    ck = str(tmp_path / "run")
    assert cli.score_main(["--checkpoint-dir", ck, "--json"]) == 0
    held = json.loads(capsys.readouterr().out)
    assert held["mode"] == "window" and held["chars_scored"] == 92 - cfg.maxlen
    other = tmp_path / "other.txt"
    other.write_text("The quick brown fox — jumps over the lazy dog, naïvely!! " * 3)
    assert cli.score_main([str(other), "--checkpoint-dir", ck, "--mode", "stateful"]) == 0
    out = capsys.readouterr()
    assert "bits/char" in out.out and "perplexity" in out.out
    assert "skipped" in out.err and "'—' x3" in out.err and "'ï' x3" in out.err
    # dynamic evaluation: beside the static figure, the same chars
    assert cli.score_main(["--checkpoint-dir", ck, "--dynamic", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dynamic"]["chars_scored"] == record["chars_scored"] + cfg.maxlen - 1
    assert record["dynamic"]["lr"] > 0 and record["dynamic"]["nats_per_char"] > 0
    assert record["dynamic"]["rule"] == "rms"  # the default; sgd on request, with its own lr
    assert cli.score_main(["--checkpoint-dir", ck, "--dynamic", "--dynamic-rule", "sgd",
                           "--json"]) == 0  # fmt: skip
    plain = json.loads(capsys.readouterr().out)["dynamic"]
    assert plain["rule"] == "sgd" and plain["lr"] != record["dynamic"]["lr"]
    assert plain["nats_per_char"] != record["dynamic"]["nats_per_char"]
    # --dynamic-tune: the best of the grid on the training text, then the scored text
    monkeypatch.setattr("charjax.dynamic.TUNE_GRID", {"rms": ((1e-4, 0.05), (3e-3, 0.0))})
    assert cli.score_main(["--checkpoint-dir", ck, "--dynamic-tune", "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)["dynamic"]
    assert [(t["lr"], t["decay"]) for t in tuned["tried"]] == [(1e-4, 0.05), (3e-3, 0.0)]
    best = min(tuned["tried"], key=lambda t: t["nats_per_char"])
    assert (tuned["lr"], tuned["decay"]) == (best["lr"], best["decay"])
    assert tuned["chars_scored"] == record["dynamic"]["chars_scored"]
    assert cli.score_main(["--checkpoint-dir", ck, "--dynamic-tune", "--dynamic-lr", "1"]) == 2
    assert "pass one or the others" in capsys.readouterr().err
    stateful = ["--mode", "stateful", "--dynamic", "--dynamic-lr", "0"]
    assert cli.score_main(["--checkpoint-dir", ck, *stateful]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "bits/char" in lines[0] and lines[1].startswith("  dynamic evaluation:")
    static, dynamic = (float(line.split(" nats/char")[0].split()[-1]) for line in lines[:2])
    assert dynamic == pytest.approx(static, rel=1e-4)  # at rate 0, the static stateful score
    assert cli.score_main(["--checkpoint-dir", ck, "--stride", "0"]) == 2
    assert "--stride must be >= 1" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("the fox")
    assert cli.score_main([str(short), "--checkpoint-dir", ck]) == 2
    assert "--mode stateful" in capsys.readouterr().err
    Path(cfg.text).write_text(Path(cfg.text).read_text() + "changed")
    assert cli.score_main(["--checkpoint-dir", ck]) == 2
    assert "is not the one the checkpoint" in capsys.readouterr().err


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_sequence_model_samples_statefully_by_default(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg.replace(objective="sequence", step=10, epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    assert cli.sample_main(["--checkpoint-dir", str(tmp_path / "run"), "--length", "20"]) == 0
    assert "mode stateful" in capsys.readouterr().err


def test_train_flags_come_from_the_config_in_named_groups():
    parser = cli.train_parser()
    titles = [g.title for g in parser._action_groups]
    assert titles[2:] == ["data", "model", "objective", "optimizer", "run", "sampling", "devices"]
    flags = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(Config):
        if f.metadata.get("cli", True):
            assert flag(f.name) in flags[f.name].option_strings
            assert f.metadata["help"] in flags[f.name].help
    assert "rho" not in flags and "epsilon" not in flags  # fields without a flag
    assert flags["lower"].option_strings == ["--keep-case", "--no-keep-case"]
    assert flags["optimizer"].choices == ("rmsprop", "adam")
    assert flags["temperatures"].type("0.2,1") == (0.2, 1.0)
    args = parser.parse_args(["--hidden", "32", "--carry-state"])
    given = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    assert given == {"hidden": 32, "carry_state": True}  # only what was given (for --resume)
    args = parser.parse_args(["--glob", "*.py", "--keep-case", "--glob", "*.md"])
    assert (args.glob, args.lower) == (("*.py", "*.md"), False)  # repeatable; turns lower off


def test_flags_are_never_abbreviated(capsys):
    assert cli.train_main(["--epoch", "2", "--checkpoint-dir", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --epoch 2" in err
    assert cli.sample_main(["--temp", "0.5"]) == 2
    assert "unrecognized arguments: --temp" in capsys.readouterr().err


@pytest.mark.parametrize(
    "main,argv,says",
    [
        (cli.train_main, ["--epoch", "2"], "--epoch 2; did you mean --epochs? (see"),
        (cli.train_main, ["--learning_rate", "1"], "; did you mean --learning-rate?"),
        (cli.sample_main, ["--temprature=0.5"], "--temprature=0.5; did you mean --temperature?"),
        (
            cli.sample_main,
            ["--temprature", "1", "--lenght", "5"],
            "did you mean --temperature for --temprature, --length for --lenght?",
        ),
        (cli.score_main, ["--zzz"], "unrecognized arguments: --zzz (see charjax-score --help)"),
    ],
)
def test_a_misspelt_flag_gets_a_suggestion_never_a_guess(capsys, main, argv, says):
    assert main([*argv, "--checkpoint-dir", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err


@pytest.mark.slow
def test_sample_streams_the_same_bytes_as_one_call(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    argv = ["--checkpoint-dir", str(tmp_path / "run"), "--seed", "5", "--length", "700"]
    argv += ["--temperature", "0.5,1.0", "--num-samples", "2", "--prime", "the fox "]
    assert cli.sample_main(argv) == 0  # streamed in blocks of 256 chars
    streamed = capsys.readouterr()
    assert cli.sample_main([*argv, "--json"]) == 0  # one call to sample.generate
    texts = [r["text"] for r in json.loads(capsys.readouterr().out)]
    assert streamed.out == "".join(text + "\n" for text in texts) and len(texts) == 4
    assert 'prime "the fox "' in streamed.err and "\x1b" not in streamed.out  # piped: no prime


@pytest.mark.slow  # trains through the command (the folder's reading: test_corpus)
def test_text_takes_folders_and_several_paths_and_resume_checks_them_all(
    capsys, tiny_text, tmp_path
):
    books = tmp_path / "books"
    books.mkdir()
    text = tiny_text.read_text()
    (books / "a.txt").write_text(text[: len(text) // 2])
    (books / "b.txt").write_text(text[len(text) // 2 :])
    extra = tmp_path / "extra.txt"
    extra.write_text(text[:300])
    tiny = ["--maxlen", "10", "--hidden", "8", "--temperatures", "", "--quiet"]
    ck = str(tmp_path / "run")
    argv = ["--text", str(books), str(extra), *tiny, "--epochs", "1", "--checkpoint-dir", ck]
    assert cli.train_main(argv) == 0
    out = capsys.readouterr().out
    assert f"corpus: {len(text) + 2 + 300 + 2:,} chars" in out  # the files and 2 separators
    (books / "c.txt").write_text("a new book")
    assert cli.train_main(["--resume", "--epochs", "2", "--checkpoint-dir", ck]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the one the checkpoint" in err


def test_presets_are_recipes_that_flags_override():
    from charjax.cli.train import config_of, train_parser
    from charjax.config import PRESETS
    from charjax.errors import CharjaxError

    parse = train_parser().parse_args
    assert config_of(parse([]))[0] == Config() == config_of(parse(["--preset", "original"]))[0]
    quality, given = config_of(parse(["--preset", "quality", "--hidden", "64"]))
    assert given == {"hidden": 64} and quality.hidden == 64
    assert all(getattr(quality, k) == v for k, v in PRESETS["quality"].items() if k != "hidden")
    quality.check()
    try:
        config_of(parse(["--preset", "quality", "--resume"]))
    except CharjaxError as e:
        assert "keeps its own recipe" in str(e)
    else:
        raise AssertionError("--preset with --resume was accepted")


def test_every_preset_is_a_valid_recipe_named_in_the_help():
    from charjax.cli.train import config_of, train_parser
    from charjax.config import PRESETS

    parser = train_parser()
    flags = " ".join(parser.format_help().split())
    for name, values in PRESETS.items():
        cfg, given = config_of(parser.parse_args(["--preset", name]))
        assert given == {} and all(getattr(cfg, k) == v for k, v in values.items()), name
        cfg.check()
        assert f"{name}:" in flags, name


# In a fresh process: the process-wide settings before, after importing the modules that save and
# read checkpoints, and after a command (`charjax-plot`, ending in an error) started.
SETTINGS = """
import json, logging, sys, threading, warnings
shown = warnings.showwarning
def settings():
    asyncio_filters = [type(f).__name__ for f in logging.getLogger("asyncio").filters]
    hooks = [sys.unraisablehook is sys.__unraisablehook__,
             threading.excepthook is threading.__excepthook__, warnings.showwarning is shown]
    return [*hooks, logging.getLogger("absl").level, asyncio_filters]
before = settings()
import charjax.checkpoint, charjax.inference, charjax.run_dir, charjax.runner
imported = settings()
from charjax import cli
code = cli.plot_main(["--checkpoint-dir", sys.argv[1]])
print(json.dumps([before, imported, settings(), code]))
"""


@pytest.mark.slow  # starts a Python process
def test_importing_the_library_leaves_the_process_alone_a_command_quiets_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SETTINGS, str(tmp_path / "none")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, imported, started, code = json.loads(done.stdout)
    assert before == [True, True, True, logging.NOTSET, []]
    assert imported == before
    assert code == 2 and "charjax-plot: error:" in done.stderr
    assert started == [False, False, False, logging.CRITICAL, ["DropUnretrievedOrbaxErrors"]]


class _Unraisable:
    """An object whose collection raises `error` (which goes to `sys.unraisablehook`)."""

    def __init__(self, error: Exception):
        self.error = error

    def __del__(self):
        raise self.error


def _raise_in_thread(error: Exception) -> None:
    def fail():
        raise error

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()


def test_quiet_process_drops_closed_loop_leftovers_passes_other_errors_on_once(monkeypatch):
    heard = []
    monkeypatch.setattr(sys, "unraisablehook", lambda a: heard.append(repr(a.exc_value)))
    monkeypatch.setattr(threading, "excepthook", lambda a: heard.append(repr(a.exc_value)))
    asyncio_log, absl_log = logging.getLogger("asyncio"), logging.getLogger("absl")
    monkeypatch.setattr(asyncio_log, "filters", [])
    level = absl_log.level
    try:
        quiet_process()
        hooks = (sys.unraisablehook, threading.excepthook)
        quiet_process()  # again: nothing added
        assert (sys.unraisablehook, threading.excepthook) == hooks
        assert len(asyncio_log.filters) == 1 and absl_log.level == logging.CRITICAL
        _Unraisable(RuntimeError("Event loop is closed"))
        _raise_in_thread(RuntimeError("Event loop is closed"))
        assert heard == []
        _Unraisable(ValueError("a bug"))
        _raise_in_thread(ValueError("another bug"))
        assert heard == ["ValueError('a bug')", "ValueError('another bug')"]
    finally:
        absl_log.setLevel(level)


def test_quiet_process_drops_orbax_read_leftovers_and_unawaited_coroutines_only(monkeypatch):
    heard = []
    monkeypatch.setattr(sys, "unraisablehook", lambda a: heard.append(repr(a.exc_value)))
    monkeypatch.setattr(threading, "excepthook", lambda a: heard.append(repr(a.exc_value)))
    monkeypatch.setattr(warnings, "showwarning", lambda m, *a, **k: heard.append(str(m)))
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    level = logging.getLogger("absl").level
    try:
        quiet_process()
        orbax_read = orbax_like("_read_array_index_and_device_put")()
        other_read = orbax_like("another_coroutine")()
        for coroutine in (orbax_read, other_read):  # as Python reports a failed finalization
            error = Exception("Encountered error while reading array index")
            sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=coroutine))
            coroutine.close()
        assert heard == ["Exception('Encountered error while reading array index')"]
        heard.clear()
        for name in ("async_deserialize", "my_coroutine", "async_deserialize.<locals>.x"):
            warnings.showwarning(
                RuntimeWarning(f"coroutine '{name}' was never awaited"), RuntimeWarning, "f", 1
            )
        assert heard == ["coroutine 'my_coroutine' was never awaited"]
    finally:
        logging.getLogger("absl").setLevel(level)


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_a_folder_of_code_trains_by_glob_and_resume_holds_to_its_choice(capsys, tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "main.py").write_text("Import pkg\nPrint(pkg.Answer)\n" * 8)
    (src / "pkg" / "__init__.py").write_bytes(b"")
    (src / "pkg" / "core.py").write_text("Answer = 42  # The answer\n" * 8)
    (src / "README.txt").write_text("not picked")
    ck = str(tmp_path / "run")
    tiny = ["--maxlen", "10", "--hidden", "8", "--temperatures", "", "--quiet"]
    code = ["--text", str(src), "--recursive", "--glob", "*.py", "--keep-case"]
    assert cli.train_main([*code, *tiny, "--epochs", "1", "--checkpoint-dir", ck]) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 empty file (pkg/__init__.py)" in err and "skipped" not in out
    saved = inference.load(ck)
    assert saved.meta.cfg.glob == ("*.py",) and not saved.meta.cfg.lower
    assert "I" in saved.meta.vocab and "#" in saved.meta.vocab  # the case kept; *.py only
    resume = ["--resume", "--epochs", "2", "--checkpoint-dir", ck]
    for flags, says in [
        (["--no-keep-case"], "--no-keep-case (checkpoint has --keep-case)"),
        (["--glob", "*.md"], "--glob '*.md' (checkpoint has --glob '*.py')"),
    ]:
        assert cli.train_main([*resume, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err
    (src / "pkg" / "extra.py").write_text("more = 1\n")  # a changed selection
    assert cli.train_main(resume) == 2
    assert "is not the one the checkpoint" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.slow  # compiles and runs for more than ~10 s on a 2-core host
def test_sample_labels_its_texts_reads_a_prime_file_and_ends_its_line_on_ctrl_c(
    tiny_cfg, tmp_path, capsys, monkeypatch
):
    cfg = tiny_cfg.replace(epochs=1, temperatures=())
    _tiny_run(cfg, tmp_path / "run")
    ck = ["--checkpoint-dir", str(tmp_path / "run"), "--length", "30"]
    two = [*ck, "--temperature", "0.5,1"]
    assert cli.sample_main(two) == 0  # piped: the texts alone, their order on stderr
    piped = capsys.readouterr()
    assert "──" not in piped.out and len(piped.out) == 2 * 31
    assert "2 texts, in this order: temperature 0.5; temperature 1" in piped.err
    terminal = _Terminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", terminal)
        assert cli.sample_main([*two, "--no-prime", "--num-samples", "2"]) == 0
    lines = terminal.getvalue().splitlines()
    assert [line for line in lines if line.startswith("──")] == [
        "── temperature 0.5, sample 1 ──", "── temperature 0.5, sample 2 ──",
        "── temperature 1, sample 1 ──", "── temperature 1, sample 2 ──",
    ] and lines[0].startswith("──")  # fmt: skip
    capsys.readouterr()
    # --prime-file: a long or multi-line prime, the same as --prime with its text
    prime = tmp_path / "prime.txt"
    prime.write_text("the lazy dog.\nthe quick fox ")
    assert cli.sample_main([*ck, "--json", "--prime-file", str(prime)]) == 0
    from_file = capsys.readouterr().out
    assert cli.sample_main([*ck, "--json", "--prime", prime.read_text()]) == 0
    assert capsys.readouterr().out == from_file
    for argv, says in [
        (["--prime-file", str(prime), "--prime", "x"], "not allowed with argument"),
        (["--prime-file", str(tmp_path / "none.txt")], "none.txt does not exist"),
        (["--prime-file", str(tmp_path)], "is a folder"),
    ]:
        assert cli.sample_main([*ck, *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err

    # Ctrl-C while a text streams: the message starts on a line of its own
    def interrupted(*args, **kw):
        yield ["the fox"]
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "stream_texts", interrupted)
    assert cli.sample_main(ck) == 130
    out, err = capsys.readouterr()
    assert out == "the fox\n" and err.endswith("\ncharjax-sample: interrupted\n")


class _ClosedPipe(io.StringIO):
    def write(self, text=""):
        raise BrokenPipeError(32, "Broken pipe")

    flush = write


def test_every_command_ends_quietly_on_a_closed_pipe(capsys, monkeypatch):
    from charjax.cli.common import PIPE_CLOSED

    def writes(args):
        print("a line")
        return 0

    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.train_main(["--help"]) == PIPE_CLOSED == 141  # even --help | head
    assert cli.run(writes, cli.sample_parser(), []) == PIPE_CLOSED  # what every command runs in
    assert capsys.readouterr().err == ""


OOM = "RESOURCE_EXHAUSTED: Out of memory allocating 57600000000 bytes."


def _out_of_memory(*args, **kw):
    raise jax.errors.JaxRuntimeError(OOM)


def test_a_model_too_big_for_memory_ends_in_one_line_naming_its_flags(
    capsys, monkeypatch, tiny_cfg, tiny_text, tmp_path
):
    monkeypatch.setattr(step, "init_state", _out_of_memory)  # as --hidden 60000 does on CPU
    argv = ["--text", str(tiny_text), "--hidden", "60000", "--temperatures", ""]
    assert cli.train_main([*argv, "--checkpoint-dir", str(tmp_path / "big")]) == 2
    assert capsys.readouterr().err == (
        "charjax-train: error: out of memory allocating 57.6 GB (the model or batch does not "
        "fit the device); lower --hidden, --layers, --batch-size or --maxlen\n"
    )
    monkeypatch.undo()
    run = tmp_path / "run"
    _tiny_run(tiny_cfg.replace(epochs=1, temperatures=()), run)
    # a read that runs out of memory is no damage (a resume would move the epoch aside)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", _out_of_memory)
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        inference.load(run)
    assert cli.sample_main(["--checkpoint-dir", str(run), "--num-samples", "9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory allocating 57.6 GB" in err, err
    assert err.endswith("lower --num-samples or --length, or sample on a device with more memory\n")
    assert Checkpoints(run).epochs() == [1]
