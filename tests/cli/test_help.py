"""`--help` reads like `git` or `rg` help: a flag shows no metavariable, an option that takes a value
shows a word (FLOAT, N, TEXT, FILE or its own), defaults are plain, arguments are in capitals."""

from __future__ import annotations

import re

import pytest
import typer

from llmgen.cli import _register, app, main


def help_text(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "240")  # one row per option: nothing wraps
    code = main([*argv, "--help"])
    out = capsys.readouterr().out
    assert code == 0
    return out


def option_cells(out: str, flag: str) -> list[str]:
    """The cells of the panel row that declares `flag`: option names, then the metavar if any, then help."""
    for line in out.splitlines():
        cells = [c for c in re.split(r"\s{2,}", line.strip(" │")) if c]
        if cells and cells[0] == flag:
            return cells
    raise AssertionError(f"no row for {flag} in:\n{out}")


def after_names(cells: list[str]) -> list[str]:
    """What follows the option names (long, short, secondary) in a row."""
    index = 0
    while index < len(cells) and cells[index].startswith("-"):
        index += 1
    return cells[index:]


def commands() -> dict[str, typer.core.TyperCommand]:
    """Every command and group, by its words after `llmgen` ("" for `llmgen` itself)."""
    _register()
    found = {}

    def walk(command, words: tuple[str, ...]) -> None:
        found[" ".join(words)] = command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, (*words, name))

    walk(typer.main.get_command(app), ())
    return found


def test_generate_help_has_no_bool_metavar_and_greedy_takes_no_value(capsys, monkeypatch) -> None:
    out = help_text(capsys, monkeypatch, "generate")
    assert "<bool>" not in out
    assert after_names(option_cells(out, "--greedy")) == ["Shorthand for --temperature 0."]
    assert after_names(option_cells(out, "--help")) == ["Show this message and exit."]


def test_generate_help_shows_words_for_values_and_plain_defaults(capsys, monkeypatch) -> None:
    out = help_text(capsys, monkeypatch, "generate")
    assert option_cells(out, "--temperature")[:3] == ["--temperature", "-t", "FLOAT"]
    assert after_names(option_cells(out, "--top-k"))[0] == "N"
    assert after_names(option_cells(out, "--stop"))[0] == "TEXT"
    assert "[default: 1.0]" in " ".join(option_cells(out, "--temperature"))
    assert "[default: (" not in out
    assert "Usage: llmgen generate [OPTIONS] [PROMPT]" in out


@pytest.mark.parametrize("words", sorted(commands()))
def test_every_command_shows_no_metavar_on_a_flag_and_one_on_an_option(capsys, monkeypatch, words: str) -> None:
    out = help_text(capsys, monkeypatch, *words.split())
    assert not re.search(r"<\w[\w\[\]|, ]*>", out), out  # no <int>, <str>, <list[str]>, <path>
    assert "[default: (" not in out
    command = commands()[words]
    ctx = command.make_context(words or "llmgen", [], resilient_parsing=True)
    options = [p for p in command.get_params(ctx) if p.param_type_name == "option" and not p.hidden]
    assert any(p.is_flag for p in options)  # --help at least
    for param in options:
        first = next((o for o in param.opts if o.startswith("--")), param.opts[0])  # the row starts with it
        rest = after_names(option_cells(out, first))
        help_start = (param.help or "")[:20]
        if param.is_flag:
            assert rest[0].startswith(help_start), (param.opts, rest)
        else:
            metavar = rest[0].split(" [")[0]  # typer may add a range: "N [x>=1]"
            assert re.fullmatch(r"\w[\w|.=-]*", metavar) and rest[1].startswith(help_start), (param.opts, rest)
