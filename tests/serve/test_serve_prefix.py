"""`llmgen serve` with its prefix cache and chunked prefill answers exactly as a server without them, on
both engines and both real files: a chat whose turns reuse the earlier ones, concurrent requests sharing a
system prompt while some of their clients drop their streams, greedy and seeded.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import MODEL_ID, need_server

from llmgen.decoding.config import DecodingConfig

TEXTS = {
    "real": ("You are a careful assistant. Answer in one short paragraph, cite no sources, and say so when you do "
             "not know. Keep the tone friendly and plain, and never use lists. " * 3,
             ["What is a lighthouse?", "And who keeps it?", "Name a famous one.", "Thanks. Summarise."]),
    "tiny": ("a bad cafe. dead beef. fade. " * 2, ["abc", "hello.", "cab bag", "h"]),
}


@pytest.fixture(scope="module", params=["smollm2", "gemma", "torch"])
def servers(request, char_model):
    need_server()
    from llmgen.loading import models
    from llmgen.serve.server import build_service, running

    if request.param == "torch":
        loaded, texts = models.load(str(char_model)), TEXTS["tiny"]
    else:
        pytest.importorskip("llama_cpp")
        from tiny_gguf import gemma_path

        from llmgen.loading import llamacpp

        if not llamacpp.batch_invariance()[0]:
            pytest.skip("this llama.cpp build is not batch-invariant")
        ref = str(gemma_path()) if request.param == "gemma" else models.DEFAULT_MODEL
        loaded, texts = models.load(ref, engine="llamacpp", threads=2), TEXTS["real"]
    cached = build_service(loaded, MODEL_ID, DecodingConfig(), 8, prefix_cache_mb=256, prefill_chunk=8)
    fresh = build_service(loaded, MODEL_ID, DecodingConfig(), 8, prefix_cache_mb=0, prefill_chunk=0)
    with running(cached) as url, running(fresh) as fresh_url:
        yield url, fresh_url, texts, loaded.engine.name, cached, loaded


def chat(url: str, messages: list[dict], seed: int | None, max_tokens: int = 12, stream: bool = False) -> dict:
    import httpx

    body = {"model": MODEL_ID, "messages": messages, "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 1}
    body.update({"temperature": 0.0} if seed is None else {"temperature": 0.9, "seed": seed})
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def answer(out: dict) -> tuple[str, list[float]]:
    choice = out["choices"][0]
    return choice["message"]["content"], [entry["logprob"] for entry in choice["logprobs"]["content"]]


def assert_same(engine: str, got: dict, want: dict) -> None:
    (text, logprobs), (want_text, want_logprobs) = answer(got), answer(want)
    assert text == want_text
    assert logprobs == (want_logprobs if engine == "llamacpp" else pytest.approx(want_logprobs, abs=1e-4))


@pytest.mark.parametrize("seed", [None, 11], ids=["greedy", "seeded"])
def test_a_conversation_reuses_its_turns_and_answers_as_a_fresh_server(servers, seed) -> None:
    url, fresh_url, (system, questions), engine, _, _ = servers
    messages = [{"role": "system", "content": system}]
    for turn, question in enumerate(questions):
        messages.append({"role": "user", "content": question})
        got, want = chat(url, messages, seed), chat(fresh_url, messages, seed)
        assert_same(engine, got, want)
        cached = got["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert want["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        if turn:  # the earlier turns' prompt and reply came from the cache
            assert cached > got["usage"]["prompt_tokens"] // 2
        messages.append({"role": "assistant", "content": answer(got)[0]})


def test_dropped_streams_never_change_a_shared_prefix(servers) -> None:
    """Eight streamed requests share the system prompt; four clients hang up after their first chunk. Then
    the same eight again, whole: each equals a fresh server's answer."""
    import httpx

    url, fresh_url, (system, questions), engine, service, _ = servers
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": q + suffix}]
               for q in questions for suffix in ("", " Briefly.")]

    def dropped(messages: list[dict]) -> None:
        body = {"model": MODEL_ID, "messages": messages, "max_tokens": 24, "stream": True, "temperature": 0.0}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and "content" in line:
                    return  # hang up mid-stream

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: dropped(prompts[i]) if i % 2 else chat(url, prompts[i], None, 24), range(8)))
        got = list(pool.map(lambda m: chat(url, m, None, 16), prompts))
    for messages, out in zip(prompts, got):
        assert_same(engine, out, chat(fresh_url, messages, None, 16))
    stats = service.scheduler.prefix_stats()
    assert stats is not None and stats["hits"] > 0 and stats["bytes"] <= stats["max_bytes"] and stats["errors"] == 0
    health = json.loads(httpx.get(url + "/health").text)
    assert health["prefix_cache"]["entries"] == stats["entries"]


def test_the_prefix_cache_outlives_a_restart_in_its_directory(servers, tmp_path, capsys) -> None:
    """--prompt-cache-dir: a second server reads what the first wrote at shutdown; a damaged file beside
    them is skipped in one line; the answers equal a fresh server's."""
    from llmgen.serve.server import build_service, running

    url, fresh_url, (system, questions), engine, _, loaded = servers
    messages = [{"role": "system", "content": system}, {"role": "user", "content": questions[0]}]
    first = build_service(loaded, MODEL_ID, DecodingConfig(), 4, prompt_cache_dir=tmp_path)
    with running(first) as first_url:
        reply = answer(chat(first_url, messages, None))[0]
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.kv"))) == 1
    (folders[0] / "damaged.kv").write_bytes(b"\x00" * 64)
    capsys.readouterr()
    second = build_service(loaded, MODEL_ID, DecodingConfig(), 4, prompt_cache_dir=tmp_path)
    notes = [line for line in capsys.readouterr().err.splitlines() if "damaged.kv" in line]
    assert len(notes) == 1 and "Traceback" not in notes[0]
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": questions[1]}]
    with running(second) as second_url:
        got = chat(second_url, messages, None)
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] > got["usage"]["prompt_tokens"] // 2
    assert_same(engine, got, chat(fresh_url, messages, None))


def test_a_speculative_server_reuses_the_turns_too(servers) -> None:
    """With --draft ngram, a lone request decodes speculatively on a sequence that starts from the prefix
    cache, and leaves its cells there; greedy answers equal a fresh plain server's."""
    from llmgen.decoding.generation import Speculation
    from llmgen.serve.server import build_service, running

    url, fresh_url, (system, questions), engine, _, loaded = servers
    service = build_service(loaded, MODEL_ID, DecodingConfig(), 4, drafting=Speculation(None, 3))
    messages = [{"role": "system", "content": system}]
    with running(service) as spec_url:
        for turn, question in enumerate(questions[:3]):
            messages.append({"role": "user", "content": question})
            got = chat(spec_url, messages, None)
            assert_same(engine, got, chat(fresh_url, messages, None))
            if turn:
                assert got["usage"]["prompt_tokens_details"]["cached_tokens"] > got["usage"]["prompt_tokens"] // 2
            messages.append({"role": "assistant", "content": answer(got)[0]})
    assert service.scheduler.counters.speculative >= 3


def test_cache_prompt_false_prefills_the_whole_prompt(servers) -> None:
    """llama-server's `cache_prompt: false`: no reuse for that request, the same answer."""
    import httpx

    url, fresh_url, (system, questions), engine, _, _ = servers
    messages = [{"role": "system", "content": system}, {"role": "user", "content": questions[0]}]
    chat(url, messages, None)
    body = {"model": MODEL_ID, "messages": messages, "max_tokens": 12, "logprobs": True, "top_logprobs": 1,
            "temperature": 0.0}
    again = httpx.post(url + "/v1/chat/completions", json=body, timeout=300).json()
    off = httpx.post(url + "/v1/chat/completions", json={**body, "cache_prompt": False}, timeout=300).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert off["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert_same(engine, off, again)
