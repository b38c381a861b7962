"""Helpers of the serve tests (the fixtures are in conftest.py): `llmgen serve`'s app under uvicorn in a
background thread, on 127.0.0.1 and a free port, over the tiny models of tests/conftest.py."""

from __future__ import annotations

import json

import pytest

from llmgen.decoding.config import DecodingConfig

MODEL_ID = "tiny"
# NOTE: the server's extra (`llmgen[serve]`) may be absent: each test module that starts a server
# importorskips it (`need_server()`); the pure ones (protocol, batch hooks) run without it.


def need_server() -> None:
    for name in ("starlette", "uvicorn", "httpx"):
        pytest.importorskip(name)


def start(loaded, base: DecodingConfig | None = None, max_batch: int = 8, api_key: str | None = None,
          drafting=None, grace: float = 5.0):
    from llmgen.serve.server import build_service, running

    service = build_service(loaded, MODEL_ID, base or DecodingConfig(), max_batch, api_key, drafting)
    return service, running(service, grace=grace)


def sse_events(response) -> list[dict | str]:
    """The data of each server-sent event of a streamed response; "[DONE]" as a string."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
