"""Audit accepts `llmgen serve` (the serve branch) with top-p and penalties: its samples follow the exact
distribution of the settings it is sent, computed with the same weights on the torch engine. Skipped
where `llmgen.serve` is absent (until that branch is merged) or its extra is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import server_process

from llmgen.cli import main

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("llmgen.serve", "starlette", "uvicorn")),
    reason="llmgen serve is not here (the serve branch, extra llmgen[serve])")

PROMPT = "My favourite colour is"


@pytest.fixture(scope="module")
def llmgen_server(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [sys.executable, "-m", "llmgen", "serve", "--model", "smollm2-135m"]
    with server_process(argv, "/health", log, name="llmgen serve", start_seconds=120, stop_seconds=15,
                        env={**os.environ, "OMP_NUM_THREADS": "1"}) as url:
        yield url


@pytest.mark.parametrize("claim", [
    ["--temperature", "0.8", "--top-p", "0.9"],
    ["--temperature", "1", "--top-k", "20", "-k", "2", "--presence-penalty", "1.5", "--frequency-penalty", "0.5"],
])
def test_audit_accepts_llmgen_serve(capsys, llmgen_server: str, claim: list[str]) -> None:
    code = main(["audit", "--url", llmgen_server, "--served-model", "smollm2-135m", "-n", "200", "--seed", "1",
                 "--json", *claim, PROMPT])
    out, err = capsys.readouterr()
    assert code == 0, err + out
    row = json.loads(out)
    assert not row["rejected"] and row["positions"][0]["dof"] >= 3
