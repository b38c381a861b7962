"""The request mapping (`serve/protocol.py`) is pure: OpenAI and vLLM fields onto DecodingConfig, on top of
the server's base settings; everything else is a 400 that names the field."""

from __future__ import annotations

import json

import pytest

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.serve.protocol import NOT_YET, APIError, chat_request, completion_request, parse_body, to_config

BASE = DecodingConfig(max_new_tokens=99, temperature=0.7)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(func, *args, param: str | None = None, status: int = 400) -> APIError:
    with pytest.raises(APIError) as info:
        func(*args)
    assert info.value.status == status
    if param is not None:
        assert info.value.param == param, info.value.message
    body = info.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return info.value


def test_absent_fields_keep_the_base_settings() -> None:
    assert to_config({}, BASE, 8) == BASE


def test_openai_and_vllm_fields_map_one_to_one() -> None:
    body = {"max_tokens": 12, "temperature": 0, "top_p": 0.5, "n": 3, "seed": 7, "stop": "x",
            "frequency_penalty": 0.5, "presence_penalty": -1, "top_k": 5, "min_p": 0.1,
            "repetition_penalty": 1.2, "ignore_eos": True, "penalty_scope": "all", "penalty_window": 4}
    config = to_config(body, BASE, 8)
    assert config == BASE.replace(max_new_tokens=12, temperature=0.0, top_p=0.5, n=3, seed=7, stop=("x",),
                                  frequency_penalty=0.5, presence_penalty=-1.0, top_k=5, min_p=0.1,
                                  repetition_penalty=1.2, ignore_eos=True, penalty_scope="all", penalty_window=4)
    assert config.greedy


def test_max_completion_tokens_when_max_tokens_is_absent_and_top_k_minus_one_is_off() -> None:
    assert to_config({"max_completion_tokens": 5}, BASE, 8).max_new_tokens == 5
    assert to_config({"max_completion_tokens": 5, "max_tokens": 6}, BASE, 8).max_new_tokens == 6
    assert to_config({"top_k": -1}, BASE.replace(top_k=40), 8).top_k == 0
    assert to_config({"stop": ["a", "b"]}, BASE, 8).stop == ("a", "b")


def test_response_format_goes_through_the_constraints() -> None:
    assert to_config({"response_format": {"type": "text"}}, BASE, 8) == BASE
    assert to_config({"response_format": {"type": "json_object"}}, BASE, 8).json_object
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    config = to_config({"response_format": {"type": "json_schema",
                                            "json_schema": {"name": "x", "schema": schema, "strict": True}}}, BASE, 8)
    assert json.loads(config.schema) == schema
    refused(to_config, {"response_format": {"type": "yaml"}}, BASE, 8, param="response_format")
    refused(to_config, {"response_format": {"type": "json_schema"}}, BASE, 8, param="response_format")
    refused(to_config, {"response_format": {"type": "json_object"}, "regex": "a+"}, BASE, 8, param="response_format")


@pytest.mark.parametrize("body, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"n": 9}, "n"),
    ({"n": True}, "n"),
    ({"seed": "1"}, "seed"),
    ({"stop": [1]}, "stop"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
])
def test_wrong_types_and_values_are_400_naming_the_field(body, param) -> None:
    refused(to_config, body, BASE, 8, param=param)


def test_every_field_is_mapped_now() -> None:
    assert NOT_YET == {}


@pytest.mark.parametrize("body, changes", [
    ({"logit_bias": {"5": 10, "7": -100}}, {"logit_bias": ((5, 10.0), (7, -100.0))}),  # OpenAI's {"id": bias}
    ({"min_tokens": 3}, {"min_tokens": 3}),
    ({"stop_token_ids": [2, 4]}, {"stop_token_ids": (2, 4)}),
])
def test_the_token_controls_map_to_the_mask_stage(body, changes) -> None:
    assert to_config(body, BASE, 8) == BASE.replace(**changes)


def test_a_bias_out_of_range_is_400_naming_logit_bias() -> None:
    refused(to_config, {"logit_bias": {"5": 500}}, BASE, 8, param="logit_bias")


def test_unknown_fields_are_named() -> None:
    error = refused(chat_request, {**CHAT, "tools": [], "foo": 1}, BASE, 8, param="foo")
    assert "foo" in error.message and "tools" in error.message


def test_chat_request_messages_logprobs_and_stream_options() -> None:
    req = chat_request({**CHAT, "logprobs": True, "top_logprobs": 3, "stream": True,
                        "stream_options": {"include_usage": True}}, BASE, 8)
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert req.logprobs == LogprobSpec(3) and req.stream and req.include_usage
    parts = {**CHAT, "messages": [{"role": "developer", "content": [{"type": "text", "text": "be "},
                                                                     {"type": "text", "text": "brief"}]}]}
    assert chat_request(parts, BASE, 8).messages == [{"role": "system", "content": "be brief"}]
    processed = chat_request({**CHAT, "logprobs": True, "logprobs_mode": "processed"}, BASE, 8)
    assert processed.logprobs == LogprobSpec(0, "processed")
    refused(chat_request, {**CHAT, "logprobs": True, "logprobs_mode": "cooked"}, BASE, 8, param="logprobs_mode")
    refused(chat_request, {**CHAT, "top_logprobs": 2}, BASE, 8, param="logprobs")
    refused(chat_request, {**CHAT, "logprobs": True, "top_logprobs": 21}, BASE, 8, param="top_logprobs")
    refused(chat_request, {**CHAT, "stream_options": {"include_usage": True}}, BASE, 8, param="stream_options")
    refused(chat_request, {**CHAT, "messages": []}, BASE, 8, param="messages")
    refused(chat_request, {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, BASE, 8, param="messages")
    refused(chat_request, {"messages": CHAT["messages"]}, BASE, 8, param="model")


def test_completion_request_prompts_and_limits() -> None:
    assert completion_request({"model": "m", "prompt": "ab"}, BASE, 8).prompts == ["ab"]
    assert completion_request({"model": "m", "prompt": [3, 4]}, BASE, 8).prompts == [[3, 4]]
    assert completion_request({"model": "m", "prompt": ["a", [5]]}, BASE, 8).prompts == ["a", [5]]
    assert completion_request({"model": "m", "prompt": "a", "logprobs": 2}, BASE, 8).logprobs == LogprobSpec(2)
    refused(completion_request, {"model": "m", "prompt": ["a"] * 3, "n": 3}, BASE, 8, param="n")
    refused(completion_request, {"model": "m", "prompt": 5}, BASE, 8, param="prompt")
    assert completion_request({"model": "m", "prompt": "a", "echo": True}, BASE, 8).echo
    scoring = completion_request({"model": "m", "prompt": "a", "echo": True, "max_tokens": 0, "logprobs": 1}, BASE, 8)
    assert scoring.score_only and scoring.config == BASE
    refused(completion_request, {"model": "m", "prompt": "a", "echo": True, "stream": True}, BASE, 8, param="echo")
    refused(completion_request, {"model": "m", "prompt": "a", "max_tokens": 0}, BASE, 8, param="max_tokens")
    refused(completion_request, {"model": "m", "prompt": "a", "best_of": 2}, BASE, 8, param="best_of")


def test_bodies_that_are_not_json_objects() -> None:
    assert parse_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"{nope", b"[1]", b"\xff"):
        assert refused(parse_body, raw).code == "invalid_json"


def test_serve_without_its_extra_is_one_line_naming_the_extra(capsys, monkeypatch) -> None:
    import sys

    import llmgen.serve
    from llmgen.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.delitem(sys.modules, "llmgen.serve.server", raising=False)
    monkeypatch.delattr(llmgen.serve, "server", raising=False)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == "llmgen: error: llmgen serve needs its extra: pip install 'llmgen[serve]'"
