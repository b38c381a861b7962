"""Real clients against `llmgen serve`: the official `openai` package (chat, completions, streaming,
logprobs, response_format, errors) and simonw's `llm` CLI configured through extra-openai-models.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving import MODEL_ID, need_server

from llmgen.cli import main

need_server()
httpx = pytest.importorskip("httpx")

openai = pytest.importorskip("openai")

PROMPT = "Write one word."


@pytest.fixture(scope="module")
def client(wide_server):
    _, url = wide_server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def generate(capsys, model, *argv: str) -> dict:
    assert main(["generate", "-m", str(model), "--json", "-q", *argv]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])


def test_openai_chat_and_completions_are_generate_greedy(capsys, wide_model, client) -> None:
    want = generate(capsys, wide_model, "--greedy", "-N", "12", PROMPT)
    reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}],
                                           temperature=0, max_tokens=12)
    assert reply.choices[0].message.content == want["text"]
    assert reply.usage.completion_tokens == len(want["token_ids"])
    assert reply.usage.prompt_tokens == len(want["prompt_token_ids"])
    assert reply.system_fingerprint.startswith("fp_llmgen-torch_")
    raw = generate(capsys, wide_model, "--greedy", "-N", "12", "--raw", "The capital of France is")
    completion = client.completions.create(model=MODEL_ID, prompt="The capital of France is", temperature=0, max_tokens=12)
    assert completion.choices[0].text == raw["text"]


def test_openai_streaming_with_usage_and_logprobs(capsys, wide_model, client) -> None:
    want = generate(capsys, wide_model, "--greedy", "-N", "10", PROMPT)
    stream = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0, max_tokens=10, stream=True, logprobs=True,
                                            top_logprobs=2, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["text"]
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == len(want["token_ids"])
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob for e in entries)
    assert chunks[-1].usage.completion_tokens == len(want["token_ids"])
    streamed = client.completions.create(model=MODEL_ID, prompt="def f(x):", temperature=0, max_tokens=8, stream=True,
                                         logprobs=1)
    pieces = list(streamed)
    whole = client.completions.create(model=MODEL_ID, prompt="def f(x):", temperature=0, max_tokens=8, logprobs=1)
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert sum(len(p.choices[0].logprobs.tokens) for p in pieces if p.choices[0].logprobs) == 8
    assert whole.choices[0].logprobs.token_logprobs[0] <= 0


def test_openai_response_format_json_schema_and_json_object(client) -> None:
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]}},
              "required": ["ok", "level"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Answer in JSON."}], max_tokens=40, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    assert reply.choices[0].finish_reason == "stop"
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"ok", "level"} and isinstance(value["ok"], bool) and value["level"] in ("low", "high")
    anything = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "JSON please."}], max_tokens=60, temperature=0,
        response_format={"type": "json_object"})
    content = anything.choices[0].message.content
    assert content.startswith("{")
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_openai_errors_and_vllm_extras(client) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages, extra_body={"mirostat": 1})  # v2 only
    assert "mirostat" in str(info.value)
    extras = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=6, seed=3,
                                            extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    again = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=6, seed=3,
                                           extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert extras.choices[0].message.content == again.choices[0].message.content


def test_simonw_llm_cli_through_extra_openai_models(capsys, tmp_path: Path, wide_model, wide_server) -> None:
    pytest.importorskip("llm")
    executable = shutil.which("llm", path=str(Path(sys.executable).parent)) or shutil.which("llm")
    if executable is None:
        pytest.skip("the llm command is not installed")
    _, url = wide_server
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: llmgen-tiny\n  model_name: {MODEL_ID}\n  api_base: \"{url}/v1\"\n", encoding="utf-8")
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "LLM_LOAD_PLUGINS": "", "OPENAI_API_KEY": "unused"}
    done = subprocess.run([executable, "-m", "llmgen-tiny", "-o", "temperature", "0", "-o", "max_tokens", "12",
                           "--no-log", PROMPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    want = generate(capsys, wide_model, "--greedy", "-N", "12", PROMPT)
    assert done.stdout.rstrip("\n") == want["text"]
