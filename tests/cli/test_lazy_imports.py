"""`llmgen --help` and every `llmgen COMMAND --help` import neither torch nor transformers: a command's
module declares its options, and what runs a model is imported inside the function that runs it.

The import-linter contract "no CLI module imports torch" allows indirect imports; this test does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmgen.cli import _register, app

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")


def imported(*argv: str) -> set[str]:
    """The top-level packages `python -X importtime -m llmgen ARGV` imports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmgen", *argv], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return {line.split("|")[-1].strip().split(".")[0] for line in run.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def command_names() -> list[str]:
    _register()
    names = [info.name for info in app.registered_commands if info.name]
    return names + [group.name for group in app.registered_groups if group.name]


def test_every_command_is_checked() -> None:
    assert {"generate", "speculate", "chat", "bench", "inspect", "score", "audit", "serve", "models",
            "presets"} <= set(command_names())


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["speculate", "--help"],
                                  ["chat", "--help"], ["bench", "--help"], ["serve", "--help"]])
def test_help_imports_neither_torch_nor_transformers(argv: list[str]) -> None:
    assert not imported(*argv) & set(HEAVY)


def test_every_command_module_imports_nothing_heavy() -> None:
    """One process for the rest: importing every command's module and building its help."""
    code = ("import sys\nfrom llmgen.cli import _register, main\n_register()\n"
            f"for name in {command_names()!r}:\n    main([name, '--help'])\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_constants_copied_to_stay_light() -> None:
    """The two defaults the CLI declares itself, so that its help needs no torch, agree with the library's."""
    from llmgen.cli import audit_cmd, batch_run
    from llmgen.decoding.batch import DEFAULT_BATCH_SIZE
    from llmgen.evaluate.selfaudit import PATHS

    assert batch_run.DEFAULT_BATCH_SIZE == DEFAULT_BATCH_SIZE
    assert audit_cmd.SELF_PATHS == PATHS
