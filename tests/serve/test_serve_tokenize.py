"""POST /tokenize and /detokenize on both engines, in vLLM's and llama-server's shapes: the ids are those the
server's own generation decodes from (the counts equal the usage of /v1/completions and /v1/chat/completions),
and the text of ids is the tokenizer's."""

from __future__ import annotations

import pytest
from serving import MODEL_ID, need_server

from llmgen.decoding.chat import render

need_server()
httpx = pytest.importorskip("httpx")

TEXT = "bad cafe"
MESSAGES = [{"role": "system", "content": "be"}, {"role": "user", "content": "abc"}]


def post(url: str, path: str, body: dict) -> dict:
    response = httpx.post(url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_vllm_prompt_counts_what_completions_decode_from(served) -> None:
    loaded, url = served
    ids = [int(i) for i in loaded.tokenizer(TEXT)["input_ids"]]
    answer = post(url, "/tokenize", {"model": MODEL_ID, "prompt": TEXT})
    assert answer == {"count": len(ids), "max_model_len": loaded.context_length, "tokens": ids}
    used = post(url, "/v1/completions", {"model": MODEL_ID, "prompt": TEXT, "max_tokens": 1})["usage"]["prompt_tokens"]
    assert answer["count"] == used
    bare = post(url, "/tokenize", {"prompt": TEXT, "add_special_tokens": False})["tokens"]
    assert bare == [int(i) for i in loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]]
    assert bare != ids or loaded.engine.name == "torch"  # the GGUF's BOS (the char tokenizer writes none)


def test_vllm_messages_count_what_chat_decodes_from(served) -> None:
    loaded, url = served
    ids = render(loaded.tokenizer, MESSAGES)
    answer = post(url, "/tokenize", {"model": MODEL_ID, "messages": MESSAGES})
    assert answer["tokens"] == ids and answer["count"] == len(ids)
    used = post(url, "/v1/chat/completions", {"model": MODEL_ID, "messages": MESSAGES, "max_tokens": 1})
    assert used["usage"]["prompt_tokens"] == len(ids)
    open_ended = post(url, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False})["tokens"]
    assert ids[:len(open_ended)] == open_ended and len(open_ended) < len(ids)  # without the assistant's "a "


def test_llama_server_content_with_and_without_specials_and_pieces(served) -> None:
    loaded, url = served
    plain = post(url, "/tokenize", {"content": TEXT})
    assert plain == {"tokens": [int(i) for i in loaded.tokenizer(TEXT, add_special_tokens=False)["input_ids"]]}
    special = post(url, "/tokenize", {"content": TEXT, "add_special": True})["tokens"]
    assert special == [int(i) for i in loaded.tokenizer(TEXT)["input_ids"]]
    pieces = post(url, "/tokenize", {"content": TEXT, "with_pieces": True})["tokens"]
    assert [p["id"] for p in pieces] == plain["tokens"]
    assert "".join(p["piece"] for p in pieces).replace("\u2581", " ") == TEXT


def test_detokenize_answers_under_both_shapes_keys(served) -> None:
    loaded, url = served
    ids = [int(i) for i in loaded.tokenizer(TEXT)["input_ids"]]
    text = loaded.tokenizer.decode(ids)
    assert post(url, "/detokenize", {"model": MODEL_ID, "tokens": ids}) == {"prompt": text, "content": text}
    assert text.endswith(TEXT) and (text != TEXT or loaded.engine.name == "torch")  # the GGUF's BOS, written out
    assert post(url, "/detokenize", {"tokens": []}) == {"prompt": "", "content": ""}


@pytest.mark.parametrize("path, body, status, param", [
    ("/tokenize", {"model": "other", "prompt": "a"}, 404, "model"),
    ("/tokenize", {"prompt": "a", "with_pieces": True}, 400, "with_pieces"),
    ("/tokenize", {"messages": MESSAGES, "add_special_tokens": True}, 400, "add_special_tokens"),
    ("/tokenize", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages"),
    ("/tokenize", {"add_special": True}, 400, None),
    ("/tokenize", {"content": 5}, 400, "content"),
    ("/detokenize", {"tokens": [0], "skip_special_tokens": True}, 400, "skip_special_tokens"),
])
def test_refusals(served, path: str, body: dict, status: int, param: str | None) -> None:
    _, url = served
    response = httpx.post(url + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
