"""Greedy output equals HF `generate(do_sample=False)` token for token: tiny models and the embedded
SmolLM2, raw and chat mode; and the KV cache rolls back exactly."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import run_sequence
from llmgen.loading.engines.torch import CachedLM


def hf_greedy(loaded, prompt_ids: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, **kwargs)
    tokens = out[0, len(prompt_ids):].tolist()
    for i, token in enumerate(tokens):  # keep the first end-of-sequence token, drop the padding after it
        if token in loaded.eos_token_ids:
            return tokens[:i + 1]
    return tokens


def llmgen_greedy(loaded, prompt_ids: list[int], max_new_tokens: int, **options) -> list[int]:
    config = DecodingConfig(temperature=0, max_new_tokens=max_new_tokens, **options)
    source = plain_tokens(CachedLM(loaded.model), prompt_ids, config, make_generator(0))
    result = run_sequence(source, loaded.tokenizer, prompt_ids, config, loaded.eos_token_ids,
                          loaded.context_length)
    return result.token_ids


def chat_ids(loaded, text: str) -> list[int]:
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.parametrize("prompt", ["abc", "hello.", "a bad cafe", "h"])
def test_greedy_equals_hf_on_char_model(char_lm, prompt: str) -> None:
    ids = char_lm.tokenizer(prompt)["input_ids"]
    assert llmgen_greedy(char_lm, ids, 40) == hf_greedy(char_lm, ids, 40)


def test_greedy_equals_hf_on_char_model_in_chat_mode(char_lm) -> None:
    ids = chat_ids(char_lm, "bead")
    assert llmgen_greedy(char_lm, ids, 40) == hf_greedy(char_lm, ids, 40)


@pytest.mark.parametrize("penalty", [1.2, 2.0])
def test_greedy_with_repetition_penalty_equals_hf(char_lm, penalty: float) -> None:
    ids = char_lm.tokenizer("abcabc")["input_ids"]
    got = llmgen_greedy(char_lm, ids, 40, repetition_penalty=penalty, penalty_scope="all")
    assert got == hf_greedy(char_lm, ids, 40, repetition_penalty=penalty)


@pytest.mark.parametrize("prompt", ["The capital of France is", "def fibonacci(n):"])
def test_greedy_equals_hf_on_wide_model(wide_lm, prompt: str) -> None:
    ids = wide_lm.tokenizer(prompt)["input_ids"]
    assert llmgen_greedy(wide_lm, ids, 30) == hf_greedy(wide_lm, ids, 30)


def test_greedy_equals_hf_on_embedded_model_raw(embedded) -> None:
    ids = embedded.tokenizer("The three primary colors are")["input_ids"]
    assert llmgen_greedy(embedded, ids, 24) == hf_greedy(embedded, ids, 24)


def test_greedy_equals_hf_on_embedded_model_chat(embedded) -> None:
    ids = chat_ids(embedded, "Plan a three-day trip to Lisbon.")
    ours = llmgen_greedy(embedded, ids, 32)
    assert ours == hf_greedy(embedded, ids, 32)
    assert "Lisbon" in embedded.tokenizer.decode(ours)


def test_rollback_equals_a_fresh_run_over_the_prefix(char_lm) -> None:
    ids = char_lm.tokenizer("abcdefg")["input_ids"]
    lm = CachedLM(char_lm.model)
    lm.forward(ids)
    lm.forward([3, 4, 5, 6], all_logits=True)
    lm.rollback(len(ids) + 1)
    after = lm.forward([7])
    fresh = CachedLM(char_lm.model)
    expected = fresh.forward(ids + [3, 7])
    assert lm.length == fresh.length == len(ids) + 2
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_sampling_stops_at_max_new_tokens_and_eos(char_lm) -> None:
    ids = char_lm.tokenizer("abc")["input_ids"]
    config = DecodingConfig(seed=3, max_new_tokens=7, ignore_eos=True)
    source = plain_tokens(CachedLM(char_lm.model), ids, config, make_generator(3))
    result = run_sequence(source, char_lm.tokenizer, ids, config, char_lm.eos_token_ids, char_lm.context_length)
    assert len(result.token_ids) == 7 and result.finish_reason == "length"
    assert result.stats["generated_tokens"] == 7 and result.stats["prompt_tokens"] == len(ids)


def test_generation_is_cut_at_the_context_length(char_lm) -> None:
    ids = char_lm.tokenizer("abcd" * 60)["input_ids"]  # 240 of the 256-token context
    config = DecodingConfig(temperature=0, max_new_tokens=100, ignore_eos=True)
    source = plain_tokens(CachedLM(char_lm.model), ids, config, make_generator(0))
    result = run_sequence(source, char_lm.tokenizer, ids, config, char_lm.eos_token_ids, char_lm.context_length)
    assert len(result.token_ids) == char_lm.context_length - len(ids)


def test_the_loop_runs_no_forward_after_the_last_token(char_lm, monkeypatch) -> None:
    lm = CachedLM(char_lm.model)
    calls = []
    original = lm.forward
    monkeypatch.setattr(lm, "forward", lambda ids, all_logits=False: calls.append(len(ids)) or original(ids))
    tokens = (t.id for t in plain_tokens(lm, [3, 4, 5], DecodingConfig(temperature=0), make_generator(0)))
    list(itertools.islice(tokens, 5))
    assert calls == [3, 1, 1, 1, 1]
