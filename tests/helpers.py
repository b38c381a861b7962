"""Helpers shared by the test files (the tiny models and their fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@contextlib.contextmanager
def server_process(argv: list[str], ready_path: str, log: Path, *, name: str, start_seconds: float,
                   stop_seconds: float, env: dict[str, str] | None = None) -> Iterator[str]:
    """A server subprocess on 127.0.0.1 and a free port (`argv` gets `--port PORT` appended): its URL once
    `ready_path` answers, within `start_seconds`; terminated (killed after `stop_seconds`) on the way out."""
    port = _free_port()
    process = subprocess.Popen([*argv, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                               env=env)  # NOTE: the log is a file, not a pipe nobody reads
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            if process.poll() is not None:
                pytest.fail(f"{name} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not start within {start_seconds:g} s")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            process.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
