"""Every `llmgen ...` command line shown in README.md and docs/*.md (in fenced code blocks, and in
inline code) parses: the command exists and each flag it uses is an option of that command. Checked
against the click commands that typer builds from the app; no model is loaded and nothing runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from llmgen.cli import _register, app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONTROL = {"|", "||", "&&", ";", "&", "(", ")"}  # what may come before a command


def fenced_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every line inside a fenced code block."""
    found, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        marker = re.match(r"(```+|~~~+)", stripped)
        if marker and (fence is None or stripped.startswith(fence)):
            fence = None if fence else marker.group(1)
        elif fence:
            found.append((number, line))
    return found


def command_lines(text: str) -> list[list[str]]:
    """The argument words of each `llmgen` invocation on a shell line, up to the next control
    operator or redirection: `cat x | llmgen generate -q - > out` gives [["generate", "-q", "-"]]."""
    lexer = shlex.shlex(text.strip().removeprefix("$ "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: not a shell line
        return []
    found, at_command_start = [], True
    for index, token in enumerate(tokens):
        if at_command_start and Path(token).name == "llmgen":
            words = []
            for word in tokens[index + 1:]:
                if word in CONTROL or set(word) <= set("<>&|;"):
                    break
                words.append(word)
            found.append(words)
        if token in CONTROL:
            at_command_start = True
        elif not (at_command_start and re.fullmatch(r"[A-Za-z_]\w*=.*", token)):  # `VAR=x llmgen` stays a start
            at_command_start = False
    return found


def root_command() -> typer.core.TyperGroup:
    _register()
    return typer.main.get_command(app)


def problems(words: list[str], root=None) -> list[str]:
    """Why `llmgen WORDS` would not parse: an unknown command, or a flag the command does not have."""
    command, path, errors = root or root_command(), ["llmgen"], []
    index = 0
    while getattr(command, "commands", None):
        # Options of a group (--version, --help) come before its command name.
        while index < len(words) and words[index].startswith("-"):
            errors += flag_problems(command, path, words[index])
            index += 1
        if index == len(words):
            return errors
        sub = command.commands.get(words[index])
        if sub is None:
            return [*errors, f"{' '.join(path)}: no command {words[index]!r}"]
        command, path, index = sub, [*path, words[index]], index + 1
    options = option_table(command)
    rest = words[index:]
    skip_value = False
    for word in rest:
        if skip_value:
            skip_value = False
            continue
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            errors += flag_problems(command, path, word)
            name = word.split("=", 1)[0]
            skip_value = name in options and not options[name] and "=" not in word
    return errors


def option_table(command) -> dict[str, bool]:
    """Every flag of a command (help included), mapped to whether it is a flag that takes no value."""
    ctx = command.make_context(command.name or "llmgen", [], resilient_parsing=True)
    table = {}
    for param in command.get_params(ctx):
        if param.param_type_name == "option":
            for name in [*param.opts, *param.secondary_opts]:
                table[name] = bool(param.is_flag or param.count)
    return table


def flag_problems(command, path: list[str], word: str) -> list[str]:
    name = word.split("=", 1)[0]
    return [] if name in option_table(command) else [f"{' '.join(path)}: no option {name}"]


def inline_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every inline code span that is an `llmgen ...` command line."""
    return [(number, span) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            for span in re.findall(r"`(llmgen [^`]+)`", line)]


def shown_commands() -> list[tuple[str, list[str]]]:
    shown = []
    for path in DOCS:
        for number, line in [*fenced_lines(path), *inline_commands(path)]:
            for words in command_lines(line):
                shown.append((f"{path.relative_to(ROOT)}:{number}", words))
    return shown


SHOWN = shown_commands()


@pytest.mark.parametrize("where, words", SHOWN, ids=[where for where, _ in SHOWN])
def test_every_command_line_in_the_docs_parses(where: str, words: list[str]) -> None:
    assert problems(words) == [], f"{where}: llmgen {shlex.join(words)}"


def test_the_readme_shows_every_command() -> None:
    shown = {tuple(words[:2]) if words[:1] in (["models"], ["presets"]) else tuple(words[:1])
             for where, words in SHOWN if where.startswith("README.md")}
    assert {("generate",), ("speculate",), ("bench",), ("models", "list"), ("presets", "show")} <= shown
    piped = [line for _, line in fenced_lines(ROOT / "README.md") if re.search(r"\|\s*llmgen ", line)]
    assert piped and all(command_lines(line) for line in piped)


def test_piped_and_redirected_lines_are_read_up_to_the_operator() -> None:
    assert command_lines('cat notes.txt | llmgen generate --preset precise > out.txt') == [
        ["generate", "--preset", "precise"]]
    assert command_lines('LLMGEN_MODEL=x llmgen generate "a | b"  # comment') == [["generate", "a | b"]]
    assert command_lines("pip install llmgen") == []
    assert command_lines("make demo") == []


def test_the_checker_finds_an_unknown_flag_or_command() -> None:
    assert problems(["generate", "--greedy", "-N", "4", "--top-p=0.9", "hi"]) == []
    assert problems(["generate", "--no-such-flag", "hi"]) == ["llmgen generate: no option --no-such-flag"]
    assert problems(["generate", "--gamma", "4", "hi"]) == ["llmgen generate: no option --gamma"]
    assert problems(["presets", "shwo", "x"]) == ["llmgen presets: no command 'shwo'"]
    assert problems(["--version"]) == []


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_every_relative_link_points_at_a_file(path: Path) -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert missing == [], missing
    if path.name in ("README.md", "benchmarks.md"):
        assert local  # the README links the documents, benchmarks.md its raw results
