"""The documentation says what the code does: every `--flag` written with a command is one that
command accepts (a bare flag in prose belongs to the command its paragraph or section names),
every flag of every command is in docs/usage.md, every relative link and image resolves to a
file in the repository (and a `#section` to a heading there), the README stays short, its first
look runs as written, and so does every python example."""

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
# The command a bare `--flag` in a document's prose belongs to, unless its paragraph or a
# heading above it names another (`charjax-sample`, `scripts/bench.py`).
DOC_COMMAND = {
    "README.md": "train",
    "BENCHMARKS.md": "train",
    "docs/architecture.md": "train",
    "docs/export.md": "export",
    "docs/gpu.md": "train",
    "docs/reliability.md": "train",
    "docs/results.md": "train",
    "docs/usage.md": "train",
}
# Flags every command has, documented once at the top of docs/usage.md.
COMMON_FLAGS = frozenset({"-h", "--help", "--debug"})

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
    """The option strings of `scripts/<command>.py` (the `charjax-<command>` program)."""
    return frozenset(parser_of(command)._option_string_actions)


@cache
def parser_of(command: str) -> argparse.ArgumentParser:
    """The parser of `scripts/<command>.py` (the `charjax-<command>` program): its main is
    called with argparse's parsing replaced by a hand-back of the parser, so nothing runs."""
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
        return got.parser
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
    """The text without its fenced blocks (each left as one blank line: paragraphs stay apart)."""
    return FENCE.sub("\n", text)


def _words(span: str) -> list[str]:
    """An inline code span's shell words (a bare `scripts/x.py` as `python scripts/x.py`)."""
    try:
        words = shlex.split(span.replace("\\|", "|").replace("\n", " "))
    except ValueError:
        return []
    return ["python", *words] if words and SCRIPT.fullmatch(words[0]) else words


def prose_uses(text: str, default: str) -> list[tuple[str, str]]:
    """(command, --flag) of the inline code in a document's prose. A span that starts with a
    command is that command's; a span that starts with a bare flag (`--dropout 0.2`) belongs to
    the command last named before it in its paragraph (a table row or a list item is a
    paragraph), else to the command of its section: named in its heading or a heading above,
    else `default`."""
    found, sections = [], [(0, default)]  # (heading level, command) from the top down
    for paragraph in re.split(r"\n\s*\n|\n(?=\||#+ |[-*] |\d+\. )", _prose(text)):
        spans = [_words(span) for span in SPAN.findall(paragraph)]
        heading = re.match(r"(#+) ", paragraph)
        if heading:
            level = len(heading.group(1))
            while sections[-1][0] >= level:
                sections.pop()
            named = [c for c, _ in map(command_of, spans) if c]
            sections.append((level, named[0] if named else sections[-1][1]))
            continue
        command = sections[-1][1]
        for words in spans:
            if words and words[0].startswith("--"):
                found += [(command, f) for f in flags_of(words)]
            elif command_of(words)[0]:
                found += _uses_of_command(words)
                command = command_of(words)[0]
    return found


def documented_flags() -> list[tuple[str, str, str]]:
    """(file, command, --flag): flags in fenced shell blocks, and in the prose's inline code
    (`prose_uses`)."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        assert name in DOC_COMMAND, f"{name}: say in DOC_COMMAND which command its flags are of"
        for lang, body in FENCE.findall(text):
            if lang in SHELL:
                found += [(name, c, f) for c, f in uses(body)]
        found += [(name, c, f) for c, f in prose_uses(text, DOC_COMMAND[name])]
    return found


ALL_COMMANDS = ("train", "sample", "score", "plot", "export", "sweep", "bench")


def test_the_docs_name_commands_and_flags():
    """Sanity of the parsing below: it finds the README's commands and the usage page's flag
    tables under the command of their section."""
    found = documented_flags()
    assert ("README.md", "train", "--max-chars") in found
    assert ("docs/usage.md", "sample", "--top-p") in found
    assert ("docs/usage.md", "bench", "--cells") in found
    assert ("docs/usage.md", "train", "--no-keep-case") in found


def test_a_bare_flag_belongs_to_the_command_of_its_paragraph_or_section():
    text = (
        "Intro `--resume`.\n\n"
        "## Sampling: `charjax-sample`\n\n"
        "| `--top-p P` | 1 | as `charjax-train --seed` sets, then `--epochs` |\n"
        "| `--length N` | 400 | |\n\n"
        "### More\n\n"
        "`--best`, then `charjax-score` reads `--stride 2`.\n"
        "- `--num-samples 2` in a list item of its own\n\n"
        "```bash\ncharjax-plot --out x.png\n```\n\n"
        "`--mode stateful` as before.\n\n"
        "## Measuring: `scripts/bench.py`\n\n"
        "`--cells`\n"
    )
    assert prose_uses(text, "train") == [
        ("train", "--resume"),
        ("sample", "--top-p"),
        ("train", "--seed"),
        ("train", "--epochs"),
        ("sample", "--length"),
        ("sample", "--best"),
        ("score", "--stride"),
        ("sample", "--num-samples"),
        ("sample", "--mode"),
        ("bench", "--cells"),
    ]


def test_every_documented_flag_is_accepted_by_its_command():
    wrong = []
    for name, command, flag in sorted(set(documented_flags())):
        if command.startswith("!"):
            wrong.append(f"{name}: {command[1:]} is not an installed command (pyproject.toml)")
        elif flag not in options(command):
            wrong.append(f"{name}: {flag} is not a flag of {_program(command)}")
    assert not wrong, "\n".join(wrong)


def figure_commands(text: str) -> list[list[str]]:
    """The words of each charjax command beside a figure: in a table's `command` column, and
    in fenced shell blocks."""
    found = []
    for lang, body in FENCE.findall(text):
        if lang in SHELL:
            for line in re.sub(r"\\\n", " ", body).splitlines():
                words = shlex.split(line, comments=True)
                if command_of(words)[0]:
                    found.append(words)
    column = None
    for line in _prose(text).splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if "command" in cells:
            column = cells.index("command")
        elif column is not None and column < len(cells):
            for span in SPAN.findall(cells[column]):
                words = _words(span)
                if command_of(words)[0]:
                    found.append(words)
    return found


def test_every_command_beside_a_figure_in_benchmarks_parses():
    """Each command that BENCHMARKS.md gives for a figure is installed (or a script here) and
    its whole command line parses with that command's own parser: flags, values and choices
    (a sweep's flags after `--` with charjax-train's)."""
    commands = figure_commands((ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"))
    assert len(commands) >= 5 and any(w[:1] == ["charjax-bench"] for w in commands)
    for words in commands:
        command, args = command_of(words)
        assert not command.startswith("!"), f"{words[0]} is not an installed command"
        parts = [(command, args)]
        if command == "sweep" and "--" in args:
            cut = args.index("--")
            parts = [("sweep", args[:cut]), ("train", args[cut + 1 :])]
        for name, argv in parts:
            try:
                parser_of(name).parse_args(argv)
            except SystemExit:
                raise AssertionError(f"BENCHMARKS.md: {shlex.join(words)} does not parse") from None


def test_the_figure_command_check_catches_a_wrong_value():
    text = "| what | command |\n|---|---|\n| x | `charjax-bench --rounds two` |\n"
    (words,) = figure_commands(text)
    with pytest.raises(SystemExit):
        parser_of("bench").parse_args(command_of(words)[1])


def _program(command: str) -> str:
    return f"charjax-{command}"


def test_every_flag_of_every_command_is_in_the_usage_page():
    """docs/usage.md documents each command's flags in its section (`--debug` and `--help`
    once, at the top, for all)."""
    text = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    documented = {(c, f) for c, f in prose_uses(text, DOC_COMMAND["docs/usage.md"])}
    for lang, body in FENCE.findall(text):
        if lang in SHELL:
            documented |= set(uses(body))
    top = _prose(text).split("\n## ")[0]
    missing = [f"`{f}`: the top of docs/usage.md" for f in ("--debug", "--help") if f not in top]
    for command in ALL_COMMANDS:
        for flag in sorted(options(command) - COMMON_FLAGS):
            if (command, flag) not in documented:
                missing.append(f"{_program(command)} {flag}")
    assert not missing, "not in docs/usage.md:\n" + "\n".join(missing)


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
    # a sample flag written in a training section is not taken for any command's
    assert prose_uses("## Training: `charjax-train`\n\n`--top-p 0.9`\n", "sample") == [
        ("train", "--top-p")
    ]
    assert "--top-p" not in options("train")


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


def python_examples() -> list[tuple[str, str]]:
    """(file, code) of every fenced `python` block of the documents: each is a complete
    example (a fragment would be fenced as plain text)."""
    found = []
    for doc in DOCS:
        name = doc.relative_to(ROOT).as_posix()
        found += [
            (name, body) for lang, body in FENCE.findall(doc.read_text("utf-8")) if lang == "python"
        ]
    return found


def test_the_library_example_is_among_the_python_examples():
    assert any(n == "docs/architecture.md" and "train_epoch" in c for n, c in python_examples())


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_examples())))
def test_python_example_runs_as_written(index, nietzsche_dir, tmp_path):
    """Each python example, run by this interpreter in a fresh folder, with the corpus in
    $CHARJAX_DATA_DIR; it must end cleanly (its own settings keep it small)."""
    name, code = python_examples()[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHARJAX_DATA_DIR": str(nietzsche_dir)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"{name}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
