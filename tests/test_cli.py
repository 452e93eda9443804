"""The commands in process: flags generated from the config, no abbreviations, named groups;
the divergence guard's one-line ending, scoring, and sampling a sequence model."""

import dataclasses
import json
from pathlib import Path

import pytest
from util import quiet

from charjax import cli, guard, inference, runner
from charjax.checkpoint import Checkpoints
from charjax.config import Config, flag


def _tiny_run(cfg, directory, **kw):
    return runner.train_run(cfg, directory, log=quiet, **kw)


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
    monkeypatch.setattr(inference, "TUNE_GRID", {"rms": ((1e-4, 0.05), (3e-3, 0.0))})
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
    assert "lower" not in flags and "rho" not in flags  # fields without a flag
    assert flags["optimizer"].choices == ("rmsprop", "adam")
    assert flags["temperatures"].type("0.2,1") == (0.2, 1.0)
    args = parser.parse_args(["--hidden", "32", "--carry-state"])
    given = {k: v for k, v in vars(args).items() if k in Config.__dataclass_fields__}
    assert given == {"hidden": 32, "carry_state": True}  # only what was given (for --resume)


def test_flags_are_never_abbreviated(capsys):
    assert cli.train_main(["--epoch", "2", "--checkpoint-dir", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --epoch 2" in err
    assert cli.sample_main(["--temp", "0.5"]) == 2
    assert "unrecognized arguments: --temp" in capsys.readouterr().err


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
