"""`llmgen serve` over HTTP, against a server started on 127.0.0.1 and a free port: the endpoints, exactness
against `llmgen generate`, errors in OpenAI's error object, the API key, and clients that go away."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import MODEL_ID, need_server, sse_events, start

from llmgen.cli import main

need_server()
httpx = pytest.importorskip("httpx")

MESSAGES = [{"role": "system", "content": "be"}, {"role": "user", "content": "abc"}]
PROMPTS = ["abc", "hello.", "a bad cafe", "dead beef", "h"]


def generate(capsys, model, *argv: str) -> list[dict]:
    """`llmgen generate ... --json` in-process: its rows."""
    assert main(["generate", "-m", str(model), "--json", "-q", *argv]) == 0
    out, _ = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()]


def chat(url: str, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"model": MODEL_ID, "messages": MESSAGES, **fields}, timeout=60)


def complete(url: str, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": MODEL_ID, **fields}, timeout=60)


def streamed_text(response: httpx.Response) -> tuple[str, list]:
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0].get("delta", {}).get("content", "") or e["choices"][0].get("text", "")
                   for e in events[:-1] if e["choices"])
    return text, events


def test_models_and_health(char_server) -> None:
    service, url = char_server
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL_ID]
    assert httpx.get(url + f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["rows"] == 0


def test_greedy_chat_is_what_generate_greedy_returns_streamed_or_not(capsys, char_model, char_server) -> None:
    _, url = char_server
    want = generate(capsys, char_model, "--greedy", "-N", "24", "--system", "be", "abc")[0]
    body = chat(url, temperature=0, max_tokens=24).json()
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want["text"]}
    assert choice["finish_reason"] == {"eos": "stop"}.get(want["finish_reason"], want["finish_reason"])
    assert body["usage"] == {"prompt_tokens": len(want["prompt_token_ids"]), "completion_tokens": len(want["token_ids"]),
                             "total_tokens": len(want["prompt_token_ids"]) + len(want["token_ids"]),
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert body["system_fingerprint"].startswith("fp_llmgen-torch_")
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL_ID, "messages": MESSAGES, "temperature": 0, "max_tokens": 24, "stream": True,
                            "stream_options": {"include_usage": True}}) as response:
        text, events = streamed_text(response)
    assert text == want["text"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"] == [] and events[-2]["usage"] == body["usage"]
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_the_token_controls_are_what_generate_does_with_them(capsys, char_model, char_server) -> None:
    """logit_bias, min_tokens and stop_token_ids through the API equal --logit-bias, --min-tokens and
    --stop-token-id on the command line (the mask stage of the same chain)."""
    _, url = char_server
    plain = generate(capsys, char_model, "--greedy", "-N", "8", "--raw", "abc")[0]["token_ids"]
    banned = plain[0]  # the greedy first token, forbidden: the output must change
    want = generate(capsys, char_model, "--greedy", "-N", "8", "--raw", "--logit-bias", f"{banned}=-100",
                    "--min-tokens", "3", "--stop-token-id", "9", "abc")[0]
    body = complete(url, prompt="abc", temperature=0, max_tokens=8, logit_bias={str(banned): -100}, min_tokens=3,
                    stop_token_ids=[9]).json()
    assert body["choices"][0]["text"] == want["text"]
    assert body["usage"]["completion_tokens"] == len(want["token_ids"]) and want["token_ids"][0] != banned


def test_greedy_requests_beside_others_return_what_they_return_alone(capsys, char_model, char_lm) -> None:
    """Every request runs beside a long stream started first (and beside each other): rows of one batch."""
    wants = [generate(capsys, char_model, "--greedy", "-N", "30", "--raw", p)[0]["text"] for p in PROMPTS]
    service, context = start(char_lm)
    with context as url:
        with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                "model": MODEL_ID, "prompt": "fade", "max_tokens": 240, "ignore_eos": True, "stream": True}) as companion:
            lines = companion.iter_lines()
            next(lines)  # the companion is decoding

            def one(i: int) -> str:
                if i % 2:
                    with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                            "model": MODEL_ID, "prompt": PROMPTS[i], "temperature": 0, "max_tokens": 30,
                            "stream": True}) as r:
                        return streamed_text(r)[0]
                return complete(url, prompt=PROMPTS[i], temperature=0, max_tokens=30).json()["choices"][0]["text"]

            with ThreadPoolExecutor(len(PROMPTS)) as pool:
                got = list(pool.map(one, range(len(PROMPTS))))
            assert service.scheduler.rows >= 1  # the companion is still running
        assert got == wants
        assert service.scheduler.counters.max_rows >= 3


def test_seeded_samples_are_reproducible_and_n_is_generate_n(capsys, char_model, char_server) -> None:
    _, url = char_server
    fields = {"prompt": "abc", "seed": 11, "max_tokens": 16, "n": 3, "temperature": 0.9}
    first = complete(url, **fields).json()
    again = complete(url, **fields).json()
    texts = [c["text"] for c in first["choices"]]
    assert texts == [c["text"] for c in again["choices"]]
    want = generate(capsys, char_model, "--seed", "11", "-N", "16", "-n", "3", "-t", "0.9", "--raw", "abc")
    assert texts == [row["text"] for row in want]
    assert first["usage"]["completion_tokens"] == sum(len(row["token_ids"]) for row in want)
    assert first["usage"]["prompt_tokens"] == len(want[0]["prompt_token_ids"])


def test_stop_strings_and_logprobs(char_server) -> None:
    _, url = char_server
    plain = complete(url, prompt="abc", temperature=0, max_tokens=30).json()["choices"][0]["text"]
    stop = plain[3:5]
    cut = complete(url, prompt="abc", temperature=0, max_tokens=30, stop=[stop]).json()["choices"][0]
    assert cut["text"] == plain[:plain.index(stop)] and cut["finish_reason"] == "stop"
    lp = complete(url, prompt="abc", temperature=0, max_tokens=6, logprobs=2).json()["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == complete(url, prompt="abc", temperature=0, max_tokens=6).json()["choices"][0]["text"]
    assert all(len(top) == 2 and max(top.values()) == lp["token_logprobs"][i] for i, top in enumerate(lp["top_logprobs"]))
    content = chat(url, temperature=0, max_tokens=6, logprobs=True, top_logprobs=3).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(e["top_logprobs"]) == 3 and e["bytes"] for e in content)


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", {"model": MODEL_ID, "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": MODEL_ID, "messages": MESSAGES, "temperature": "warm"}, 400, "temperature"),
    ("/v1/completions", {"model": MODEL_ID, "prompt": "a" * 400}, 400, "prompt"),
    ("/v1/completions", {"model": MODEL_ID, "prompt": "a", "n": 9}, 400, "n"),
    ("/v1/completions", {"model": MODEL_ID, "prompt": "a", "best": 1}, 400, "best"),
    ("/v1/completions", {"model": MODEL_ID, "prompt": "a", "logit_bias": {"3": 500}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "a"}, 404, "model"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(char_server, path, body, status, param) -> None:
    _, url = char_server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert complete(url, prompt="ab", max_tokens=2).status_code == 200


def test_prompt_beyond_the_context_names_the_code(char_server) -> None:
    _, url = char_server
    error = complete(url, prompt="a" * 400).json()["error"]
    assert error["code"] == "context_length_exceeded" and "context" in error["message"]
    assert httpx.get(url + "/nowhere").status_code == 404


def test_api_key(char_lm) -> None:
    _, context = start(char_lm, api_key="s3cret")
    with context as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": "a"}, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        ok = httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": "a", "max_tokens": 2},
                        headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(url + "/health").status_code == 200  # health needs no key


def wait_idle(service, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.scheduler.rows == 0 and service.scheduler.cache_rows == 0 and service.scheduler.waiting == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"rows left: {service.scheduler.rows}, cache rows {service.scheduler.cache_rows}")


def test_a_dropped_stream_frees_its_row_and_the_other_streams_go_on(char_lm) -> None:
    service, context = start(char_lm)
    long = {"model": MODEL_ID, "temperature": 0, "max_tokens": 240, "ignore_eos": True, "stream": True}
    with context as url:
        want = complete(url, prompt="abc", temperature=0, max_tokens=240, ignore_eos=True).json()["choices"][0]["text"]

        def full(i: int) -> str:
            with httpx.stream("POST", url + "/v1/completions", json={**long, "prompt": "abc"}, timeout=60) as r:
                return streamed_text(r)[0]

        with ThreadPoolExecutor(2) as pool:
            others = [pool.submit(full, i) for i in range(2)]
            with httpx.stream("POST", url + "/v1/completions", json={**long, "prompt": "hello."}, timeout=60) as r:
                lines = r.iter_lines()
                for _ in range(6):  # a few chunks, then the client goes away
                    next(lines)
            assert [f.result() for f in others] == [want, want]
        wait_idle(service)
        counters = service.scheduler.counters
        assert counters.cancelled == 1 and counters.failed == 0
        assert counters.max_rows >= 2


@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch"),
    (["--port", "0"], "--port"),
    (["--grace", "-1"], "--grace"),
    (["--preset", "no-such-preset"], "no-such-preset"),
    (["--gamma", "0", "--draft", "ngram"], "--gamma"),
])
def test_bad_serve_options_are_one_line_and_exit_2(capsys, argv, needle) -> None:
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmgen: error: ") and needle in lines[0], err


def test_n_choices_stream_interleaved_and_match_the_whole_answer(char_server) -> None:
    _, url = char_server
    fields = {"model": MODEL_ID, "prompt": ["abc", "fade"], "n": 2, "seed": 4, "max_tokens": 12, "temperature": 1.0}
    whole = complete(url, **{k: v for k, v in fields.items() if k != "model"}).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2, 3]
    with httpx.stream("POST", url + "/v1/completions", json={**fields, "stream": True}, timeout=60) as r:
        events = sse_events(r)
    texts = ["", "", "", ""]
    finished = {}
    for event in events[:-1]:
        choice = event["choices"][0]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert texts == [c["text"] for c in whole["choices"]]
    assert finished == {c["index"]: c["finish_reason"] for c in whole["choices"]}


def test_a_client_that_stops_waiting_for_a_whole_answer_cancels_its_row(long_char_model) -> None:
    from llmgen.loading import models

    service, context = start(models.load(str(long_char_model)))
    with context as url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(url + "/v1/completions", json={"model": MODEL_ID, "prompt": "abc", "max_tokens": 8000,
                                                      "ignore_eos": True}, timeout=httpx.Timeout(60, read=0.5))
        wait_idle(service)
        assert service.scheduler.counters.cancelled == 1 and service.scheduler.counters.finished == 0


class _Broken:
    """A matcher that fails on its third token: a row that raises in the middle of the batch."""

    def __init__(self, vocab: int) -> None:
        import torch

        self.mask, self.taken = torch.ones(vocab, dtype=torch.bool), 0

    def allowed(self):
        return self.mask

    def advance(self, token: int) -> None:
        self.taken += 1
        if self.taken == 3:
            raise RuntimeError("broken matcher")

    def rollback(self, count: int) -> None:
        pass


def test_a_row_that_fails_mid_batch_fails_its_request_and_the_server_goes_on(char_lm) -> None:
    import queue

    from llmgen.decoding.batch import Row, row_generator
    from llmgen.decoding.config import DecodingConfig
    from llmgen.serve.scheduler import Job, next_key

    service, context = start(char_lm)
    with context as url:
        events: queue.SimpleQueue = queue.SimpleQueue()
        row = Row(next_key(), [3, 4, 5], DecodingConfig(max_new_tokens=20), row_generator(1, 0),
                  matcher=_Broken(char_lm.vocab_size))
        service.scheduler.submit(Job([row], events.put))
        event = events.get(timeout=30)
        while event[0] == "text":
            event = events.get(timeout=30)
        assert event[0] == "error" and "broken matcher" in event[1]
        assert complete(url, prompt="ab", max_tokens=3).status_code == 200
        assert service.scheduler.counters.failed == 1 and service.scheduler.alive


def test_processed_logprobs_are_the_distribution_the_token_was_drawn_from(char_server) -> None:
    _, url = char_server
    fields = {"prompt": "abc", "max_tokens": 6, "seed": 2, "temperature": 0.7, "top_k": 3, "logprobs": 5}
    raw = complete(url, **fields).json()["choices"][0]["logprobs"]
    processed = complete(url, **fields, logprobs_mode="processed").json()["choices"][0]["logprobs"]
    assert raw["tokens"] == processed["tokens"]  # the same draws
    for top in processed["top_logprobs"]:  # top-k 3: at most 3 tokens can be drawn, and they sum to 1
        assert len(top) <= 3
        assert abs(sum(math.exp(v) for v in top.values()) - 1) < 1e-4
    assert any(len(top) == 5 for top in raw["top_logprobs"])


def test_echo_scores_the_prompt_as_the_model_does(char_lm, char_server) -> None:
    """lm-eval's loglikelihood request: echo, logprobs, max_tokens 0 (or 1): each prompt token's logprob
    given the tokens before it, against the model's own forward."""
    import torch

    _, url = char_server
    prompt = "a bad cafe"
    ids = char_lm.tokenizer(prompt)["input_ids"]
    with torch.inference_mode():
        want = char_lm.model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)  # [len - 1, vocab]
    for max_tokens in (0, 1):
        body = complete(url, prompt=prompt, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0).json()
        choice = body["choices"][0]
        lp = choice["logprobs"]
        assert choice["text"].startswith(prompt) and lp["token_logprobs"][0] is None
        got = lp["token_logprobs"][1:len(ids)]
        assert got == pytest.approx([float(want[i, t]) for i, t in enumerate(ids[1:])], abs=1e-4)
        assert len(lp["tokens"]) == len(ids) + max_tokens
        usage = dict(body["usage"])
        assert usage.pop("prompt_tokens_details")["cached_tokens"] < len(ids)
        assert usage == {"prompt_tokens": len(ids), "completion_tokens": max_tokens, "total_tokens": len(ids) + max_tokens}
        assert lp["text_offset"][:3] == [0, 1, 2]
