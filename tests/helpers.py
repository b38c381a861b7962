"""Helpers shared by the test files (the tiny models and their fixtures live in conftest.py)."""

from __future__ import annotations

import io
import sys

from llmgen.cli import main


def run(capsys, *argv: str, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """The CLI in this process: (exit code, stdout, stderr). `stdin` needs `monkeypatch`."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> str:
    """stderr holds exactly one line, `llmgen: error: ...`, with each needle in it, and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmgen: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
