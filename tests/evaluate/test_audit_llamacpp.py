"""A real peer: `python -m llama_cpp.server` on the embedded GGUF. A client that claims only
`temperature: 1` gets its hidden defaults (top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1;
llama_cpp/server/types.py): audit rejects it and names the truncation. Claiming those defaults too,
it is consistent. The exact distribution comes from llama.cpp's own logits (--oracle-engine llamacpp).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import server_process

from llmgen.cli import main

SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
pytestmark = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in SERVER_MODULES),
                                reason="llama-cpp-python's server is not installed (the extra llmgen[llamacpp-server])")

PROMPT = "My favourite colour is"  # 29 tokens survive the server's defaults; they hold 61% of the claimed mass
TRUNCATIONS = ("top-k 40", "top-p 0.95", "min-p 0.05", "llama-cpp-python server defaults")


@pytest.fixture(scope="module")
def llama_server(embedded_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from llmgen.loading.registry import resolve

    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", resolve("smollm2-135m").location,
            "--host", "127.0.0.1", "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"]
    with server_process(argv, "/v1/models", log, name="llama_cpp.server", start_seconds=90, stop_seconds=10) as url:
        yield url


def audit(capsys, url: str, *claim: str) -> tuple[int, dict]:
    code = main(["audit", "--url", url, "--oracle-engine", "llamacpp", "-n", "200", "--seed", "1", "--json",
                 *claim, PROMPT])
    out, err = capsys.readouterr()
    assert code in (0, 1), err
    return code, json.loads(out)


def test_claiming_only_temperature_1_is_rejected_and_the_truncation_named(capsys, llama_server: str) -> None:
    code, row = audit(capsys, llama_server, "--temperature", "1")
    assert code == 1 and row["rejected"] and row["request"] == {"temperature": 1.0}
    assert row["p_value"] < 1e-6
    assert row["explanation"]["name"].startswith(TRUNCATIONS), row["explanation"]
    assert row["explanation"]["p_value"] > 1e-3  # the samples fit the claim plus that default
    assert row["under"] == [] or all(u["observed"] < u["expected"] for u in row["under"])


def test_claiming_the_servers_defaults_is_consistent(capsys, llama_server: str) -> None:
    code, row = audit(capsys, llama_server, "--temperature", "1", "--top-k", "40", "--top-p", "0.95", "--min-p", "0.05",
                      "--repetition-penalty", "1.1")
    assert code == 0 and not row["rejected"], row
    assert row["positions"][0]["dof"] >= 5  # many tokens survive: the test had something to say
