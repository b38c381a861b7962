"""Soak: long generations keep memory flat after warm-up.

The whole pipeline runs (KV-cached forward, penalties and warpers, the pick, incremental detokenizing)
for 2,048 tokens on a tiny model and 512 on the embedded SmolLM2. The resident set size is measured
after a warm-up and at the end; the only growth expected is the KV cache itself, which is computed
and reported beside it. Run with `-s` to see the figures:

    .venv/bin/pytest -s tests/test_soak.py
"""

from __future__ import annotations

import gc
from pathlib import Path

import psutil
import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import run_sequence
from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM

MB = 1024 * 1024
BOUND_MB = 50  # growth allowed after warm-up, on top of the KV cache


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def kv_bytes_per_token(loaded: models.LoadedModel) -> int:
    config = loaded.model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = torch.finfo(loaded.dtype).bits // 8
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element  # keys and values


def soak(loaded: models.LoadedModel, prompt: list[int], config: DecodingConfig, warmup: int) -> dict[str, float]:
    """Generate config.max_new_tokens tokens; RSS after `warmup` tokens, at the end, and the peak between."""
    marks: dict[str, float] = {}
    peak = 0

    def source():
        nonlocal peak
        for index, token in enumerate(plain_tokens(CachedLM(loaded.model), prompt, config, make_generator(0))):
            if index == warmup:
                marks["after_warmup"] = rss()
            elif index > warmup and index % 128 == 0:
                peak = max(peak, rss())
            yield token

    result = run_sequence(source(), loaded.tokenizer, prompt, config, loaded.eos_token_ids, loaded.context_length)
    assert len(result.token_ids) == config.max_new_tokens and result.finish_reason == "length"
    marks["end"] = rss()
    grown_tokens = config.max_new_tokens - warmup
    return {
        "tokens": config.max_new_tokens,
        "growth_mb": (marks["end"] - marks["after_warmup"]) / MB,
        "peak_growth_mb": (max(peak, marks["end"]) - marks["after_warmup"]) / MB,
        "kv_cache_growth_mb": grown_tokens * kv_bytes_per_token(loaded) / MB,
    }


def report(name: str, figures: dict[str, float]) -> None:
    print(f"\nsoak {name}: {figures['tokens']:.0f} tokens, RSS growth after warm-up {figures['growth_mb']:.1f} MB "
          f"(peak {figures['peak_growth_mb']:.1f} MB; the KV cache itself grew {figures['kv_cache_growth_mb']:.1f} MB)")


SAMPLED = DecodingConfig(temperature=0.8, top_k=8, top_p=0.95, min_p=0.01, frequency_penalty=0.2,
                         presence_penalty=0.1, repetition_penalty=1.1, penalty_window=64, ignore_eos=True, seed=0)


def test_2048_tokens_on_a_tiny_model_keep_memory_flat(long_char_model: Path) -> None:
    loaded = models.load(str(long_char_model))
    prompt = loaded.tokenizer("abc abc")["input_ids"]
    figures = soak(loaded, prompt, SAMPLED.replace(max_new_tokens=2048), warmup=256)
    report("tiny model", figures)
    assert figures["growth_mb"] < BOUND_MB + figures["kv_cache_growth_mb"]
    assert figures["peak_growth_mb"] < BOUND_MB + figures["kv_cache_growth_mb"]


def test_512_tokens_on_the_embedded_model_keep_memory_flat(embedded: models.LoadedModel) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    prompt = embedded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(prompt, "keys"):
        prompt = prompt["input_ids"]
    figures = soak(embedded, list(prompt), DecodingConfig(temperature=0, max_new_tokens=512, ignore_eos=True,
                                                          repetition_penalty=1.1), warmup=64)
    report("embedded SmolLM2-135M", figures)
    assert figures["growth_mb"] < BOUND_MB + figures["kv_cache_growth_mb"]
    assert figures["peak_growth_mb"] < BOUND_MB + figures["kv_cache_growth_mb"]
