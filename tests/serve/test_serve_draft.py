"""`llmgen serve --draft`: a request alone decodes speculatively; when another arrives, it joins the batch
at the end of its round and goes on as a row. Greedy output is the same either way."""

from __future__ import annotations

import json

import pytest
from serving import MODEL_ID, need_server, start

from llmgen.loading import models
from llmgen.serve.scheduler import Drafting

need_server()
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def draft_lm(draft_model):
    return models.load(str(draft_model))


def body(prompt: str, **fields) -> dict:
    return {"model": MODEL_ID, "prompt": prompt, "temperature": 0, "max_tokens": 120, "ignore_eos": True, **fields}


def text_of(url: str, prompt: str, **fields) -> str:
    return httpx.post(url + "/v1/completions", json=body(prompt, **fields), timeout=60).json()["choices"][0]["text"]


def test_alone_speculative_and_joined_rows_give_the_plain_greedy_text(char_lm, draft_lm) -> None:
    _, plain = start(char_lm)
    with plain as url:
        want = {p: text_of(url, p) for p in ("abc", "hello.")}
        long = text_of(url, "abc", max_tokens=240)
    service, context = start(char_lm, drafting=Drafting(draft_lm, gamma=3))
    with context as url:
        assert text_of(url, "abc") == want["abc"]  # alone: speculative from start to end
        counters = service.scheduler.counters
        assert (counters.speculative, counters.joined) == (1, 0) and counters.draft_proposed > 0
        with httpx.stream("POST", url + "/v1/completions", json=body("abc", max_tokens=240, stream=True),
                          timeout=60) as first:
            lines = first.iter_lines()
            seen = [next(lines)]  # the first request is decoding speculatively
            assert text_of(url, "hello.") == want["hello."]  # the second makes the first join the batch
            seen += list(lines)
        events = [json.loads(line[6:]) for line in seen if line.startswith("data: {")]
        assert seen[-1] == "data: [DONE]" or seen[-2] == "data: [DONE]"
        assert "".join(e["choices"][0]["text"] for e in events) == long
        assert counters.joined == 1 and counters.speculative == 2
        assert service.scheduler.rows == 0


def test_seeded_sampled_requests_alone_are_reproducible_with_a_fixed_gamma(char_lm) -> None:
    """NOTE: with --gamma auto the round lengths follow measured timings, so the draws (not their
    distribution) differ from run to run; a fixed gamma makes a seeded request reproducible."""
    service, context = start(char_lm, drafting=Drafting(None, gamma=3))  # the n-gram draft
    with context as url:
        fields = {"temperature": 0.8, "seed": 5, "max_tokens": 40, "ignore_eos": False}
        assert text_of(url, "abcabc", **fields) == text_of(url, "abcabc", **fields)
        assert service.scheduler.counters.speculative == 2


def test_a_constrained_request_decodes_speculatively_to_the_plain_greedy_output(wide_lm) -> None:
    pytest.importorskip("llguidance")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    request = {"model": MODEL_ID, "messages": [{"role": "user", "content": "JSON"}], "temperature": 0, "max_tokens": 30,
               "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    texts = []
    for drafting in (None, Drafting(None, gamma=3)):
        service, context = start(wide_lm, drafting=drafting)
        with context as url:
            reply = httpx.post(url + "/v1/chat/completions", json=request, timeout=60).json()
            texts.append(reply["choices"][0]["message"]["content"])
        assert service.scheduler.counters.speculative == (0 if drafting is None else 1)
    assert texts[0] == texts[1]
    assert set(json.loads(texts[0])) == {"ok", "n"}
