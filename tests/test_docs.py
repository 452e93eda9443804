"""The documentation says what the code does: every `--flag` written with a command is one that
command accepts, every relative link and image resolves to a file in the repository (and a
`#section` to a heading there), the README stays short, and its first look runs as written."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
FIRST_LOOK = "<!-- first-look -->"  # marks the README's first-look block

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
SCRIPT = re.compile(r"scripts/(\w+)\.py")
SHELL = {"bash", "sh", "shell", "console"}
# Every way into argparse's parsing (a command's parser may override the outer ones).
PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "_parse_known_args")


class _Parser(BaseException):
    """Raised by the patched `parse_args` to hand the command's parser back unparsed."""

    def __init__(self, parser):
        self.parser = parser


@cache
def options(command: str) -> frozenset[str]:
    """The option strings of `scripts/<command>.py` (the `charjax-<command>` program): its main
    is called with argparse's parsing replaced by a hand-back of the parser, so nothing runs."""
    path = ROOT / "scripts" / f"{command}.py"
    assert path.is_file(), f"the docs name scripts/{command}.py, which does not exist"
    spec = importlib.util.spec_from_file_location(f"_docs_script_{command}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its `if __name__ == "__main__"` keeps it from running
    mains = [v for k, v in vars(module).items() if k.endswith("main") and callable(v)]
    assert len(mains) == 1, f"scripts/{command}.py: expected one *main function, got {mains}"

    def hand_back(self, *args, **kwargs):
        raise _Parser(self)

    names = [n for n in PARSE_METHODS if hasattr(argparse.ArgumentParser, n)]
    saved = {n: getattr(argparse.ArgumentParser, n) for n in names}
    for n in names:
        setattr(argparse.ArgumentParser, n, hand_back)
    try:
        mains[0]([])
    except _Parser as got:
        return frozenset(got.parser._option_string_actions)
    finally:
        for n, method in saved.items():
            setattr(argparse.ArgumentParser, n, method)
    raise AssertionError(f"scripts/{command}.py's main built no argparse parser")


@cache
def console_scripts() -> frozenset[str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return frozenset(tomllib.load(f)["project"]["scripts"])


def command_of(words: list[str]) -> tuple[str | None, list[str]]:
    """A simple command's words -> (its charjax command or None, its arguments)."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None, []
    if re.fullmatch(r"charjax-[a-z]+", words[0]):
        if words[0] not in console_scripts():
            return f"!{words[0]}", words[1:]  # reported: not an installed command
        return words[0].removeprefix("charjax-"), words[1:]
    if words[0] in ("python", "python3") and len(words) > 1:
        script = SCRIPT.fullmatch(words[1])
        if script:
            return script.group(1), words[2:]
    return None, []


def flags_of(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if FLAG.fullmatch(w.split("=")[0])]


def uses(text: str) -> list[tuple[str, str]]:
    """(command, --flag) for every flag of every charjax command in a shell text; a sweep's
    flags after `--` belong to the training runs it starts."""
    text = re.sub(r"\\\n", " ", text)
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            words, simple = list(lexer), []
        except ValueError as e:
            raise AssertionError(f"a shell line the docs cannot parse: {line!r}: {e}") from None
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|()<>"):
                found += _uses_of_command(simple)
                simple = []
            else:
                simple.append(word)
    return found


def _uses_of_command(words: list[str]) -> list[tuple[str, str]]:
    command, args = command_of(words)
    if command is None:
        return []
    if command.startswith("!"):
        return [(command, "")]
    if command == "sweep" and "--" in args:
        cut = args.index("--")
        return [("sweep", f) for f in flags_of(args[:cut])] + [
            ("train", f) for f in flags_of(args[cut + 1 :])
        ]
    return [(command, f) for f in flags_of(args)]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def documented_flags() -> list[tuple[str, str, str]]:
    """(file, command, --flag): flags in fenced shell blocks and in inline code that starts
    with a command; inline code that starts with a bare flag (`--dropout 0.2`) is checked
    against every command (command "*")."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for lang, body in FENCE.findall(text):
            if lang in SHELL:
                found += [(name, c, f) for c, f in uses(body)]
        for span in SPAN.findall(_prose(text)):
            span = span.replace("\\|", "|")
            try:
                words = shlex.split(span.replace("\n", " "))
            except ValueError:
                continue
            if not words:
                continue
            if words[0].startswith("--"):
                found += [(name, "*", f) for f in flags_of(words)]
            else:
                found += [(name, c, f) for c, f in _uses_of_command(words)]
    return found


ALL_COMMANDS = ("train", "sample", "score", "plot", "export", "sweep", "bench")


def test_the_docs_name_commands_and_flags():
    """Sanity of the parsing below: it finds the README's commands."""
    found = documented_flags()
    assert ("README.md", "train", "--max-chars") in found
    assert any(c == "*" for _, c, _ in found)


def test_every_documented_flag_is_accepted_by_its_command():
    wrong = []
    for name, command, flag in sorted(set(documented_flags())):
        if command.startswith("!"):
            wrong.append(f"{name}: {command[1:]} is not an installed command (pyproject.toml)")
        elif command == "*":
            if not any(flag in options(c) for c in ALL_COMMANDS):
                wrong.append(f"{name}: {flag} (no command has it)")
        elif flag not in options(command):
            wrong.append(f"{name}: {flag} is not a flag of charjax-{command}")
    assert not wrong, "\n".join(wrong)


def test_the_flag_check_catches_a_wrong_flag():
    assert uses("python scripts/train.py --epoch 2 && charjax-sample --best") == [
        ("train", "--epoch"),
        ("sample", "--best"),
    ]
    assert "--epoch" not in options("train") and "--epochs" in options("train")
    assert uses("CHARJAX_CPU_DEVICES=1 python scripts/sweep.py r --jobs 2 -- --dropout 0.2") == [
        ("sweep", "--jobs"),
        ("train", "--dropout"),
    ]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = _prose(doc.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_and_image_resolves_in_the_repository():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)}: {target}"
            if not file.is_relative_to(ROOT):
                broken.append(f"{where} points outside the repository")
            elif not file.exists():
                broken.append(f"{where} does not exist")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def first_look() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert FIRST_LOOK in text, f"README.md lost its {FIRST_LOOK} marker"
    block = FENCE.search(text, text.index(FIRST_LOOK))
    return [line for line in block.group(2).splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_first_look_runs_as_written(nietzsche_dir, tmp_path):
    """Each line of the README's first look, run by bash in a fresh folder with the repository's
    scripts, with `python` the interpreter the install command made (this one)."""
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    (tmp_path / "README.md").symlink_to(ROOT / "README.md")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "CHARJAX_DATA_DIR": str(nietzsche_dir),
    }
    for line in first_look():
        done = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert (tmp_path / "checkpoints" / "quick" / "metrics.jsonl").is_file()
    assert (tmp_path / "checkpoints" / "quick" / "loss.png").is_file()
