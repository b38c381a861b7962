"""Untrusted weights at the command line: pickle-only directories and configs that need remote code are
refused in one line, and the flags really are what lets them through.

The library-level refusals are in tests/test_models.py (`test_pickle_weights_are_refused_unless_allowed`,
`test_remote_code_is_refused_unless_trusted`). Here the remote code is real: importing it leaves a
marker file, so the tests show that without `--trust-remote-code` not one line of it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import one_line_error

from llmgen.cli import main

ROOT = Path(__file__).resolve().parents[2]

MODELING = '''
import os
from pathlib import Path

Path(os.environ["LLMGEN_TEST_MARKER"]).write_text("remote code ran")

from transformers import LlamaForCausalLM


class MarkerForCausalLM(LlamaForCausalLM):
    pass
'''


@pytest.fixture
def pickled(tmp_path: Path, char_model: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    path = tmp_path / "pickled"
    shutil.copytree(char_model, path)
    torch.save(AutoModelForCausalLM.from_pretrained(path).state_dict(), path / "pytorch_model.bin")
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    return path


def test_generate_refuses_pickle_weights_unless_allow_pickle(capsys, pickled: Path) -> None:
    args = ["generate", "-m", str(pickled), "--raw", "--greedy", "-N", "3", "--json", "abc"]
    capsys.readouterr()  # the fixture's own loading output
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    one_line_error(err, "pickle", "--allow-pickle")
    code = main([*args, "--allow-pickle"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 3


@pytest.fixture
def remote(tmp_path: Path, char_model: Path) -> Path:
    path = tmp_path / "remote"
    shutil.copytree(char_model, path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_marker.MarkerForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_marker.py").write_text(MODELING)
    return path


def test_remote_code_never_runs_without_trust_remote_code(capsys, monkeypatch, tmp_path: Path, remote: Path) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv("LLMGEN_TEST_MARKER", str(marker))
    code = main(["generate", "-m", str(remote), "--raw", "abc"])
    assert code == 1
    one_line_error(capsys.readouterr().err, "remote code", "--trust-remote-code")
    assert not marker.exists()


def test_trust_remote_code_runs_it(tmp_path: Path, remote: Path) -> None:
    """In a subprocess: transformers copies remote code into HF_MODULES_CACHE, read when it is imported."""
    marker = tmp_path / "marker"
    env = {**os.environ, "LLMGEN_TEST_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-m", "llmgen", "generate", "-m", str(remote), "--trust-remote-code",
                           "--raw", "--greedy", "-N", "3", "--json", "--quiet", "abc"],
                          capture_output=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert marker.read_text() == "remote code ran"
    assert len(json.loads(done.stdout)["token_ids"]) == 3
