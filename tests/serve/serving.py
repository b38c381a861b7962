"""Helpers of the serve tests (the fixtures are in conftest.py): `llmgen serve`'s app under uvicorn in a
background thread, on 127.0.0.1 and a free port, over the tiny models of tests/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmgen.decoding.config import DecodingConfig

MODEL_ID = "tiny"
LEAD_TEMPLATE = "{% if lead is defined %}{{ lead }} {% endif %}"  # a template variable, for chat_template_kwargs
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


def tiny_with_lead(engine: str, path: Path):
    """The char model (torch) or the tiny GGUF (llamacpp), with LEAD_TEMPLATE before its chat template."""
    from llmgen.loading import models

    if engine == "torch":
        from tiny_models import CHAT_TEMPLATE, VOCAB, build_char_tokenizer, build_llama

        tokenizer = build_char_tokenizer(path)
        tokenizer.chat_template = LEAD_TEMPLATE + CHAT_TEMPLATE
        tokenizer.save_pretrained(path)
        build_llama(path, VOCAB, seed=1)
        return models.load(str(path))
    import tiny_gguf

    template = tiny_gguf.CHAT_TEMPLATE
    tiny_gguf.CHAT_TEMPLATE = LEAD_TEMPLATE + template  # read by write_tiny_llama as it writes
    try:
        gguf = tiny_gguf.write_tiny_llama(path / "tiny.gguf", seed=1)
    finally:
        tiny_gguf.CHAT_TEMPLATE = template
    return models.load(str(gguf), engine="llamacpp", threads=1)


def sse_events(response) -> list[dict | str]:
    """The data of each server-sent event of a streamed response; "[DONE]" as a string."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
