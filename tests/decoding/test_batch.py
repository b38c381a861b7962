"""Batched decoding is exact: greedy rows equal HF `generate()` greedy on the same left-padded batch,
token for token; against each prompt decoded alone they may differ only at a near-tie; continuous
batching, static batches and one-at-a-time give the same rows; the row cache keeps its layout."""

from __future__ import annotations

import pytest
import torch

from llmgen.decoding.batch import Row, decode_rows, row_generator, sample_rows
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import run_sequence
from llmgen.loading.engines.base import SerialRows
from llmgen.loading.engines.torch import CachedLM, RowCache
from llmgen.loading.loaded import ModelInfo

CHAR_PROMPTS = ["abc", "hello.", "a bad cafe", "h", "dead beef cafe", "ab", "fade.", "cab bag"]
TEXT_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Three primary colors are red,"]


def limits(loaded) -> ModelInfo:
    return ModelInfo(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)


def batched(loaded, prompts: list[list[int]], config: DecodingConfig, batch_size: int = 8,
            continuous: bool = True) -> list[list[int]]:
    rows = [Row(i, p, config, row_generator(config.seed, i)) for i, p in enumerate(prompts)]
    out: dict[int, list[int]] = {}
    decode_rows(RowCache(loaded.model), rows, limits(loaded), batch_size=batch_size, continuous=continuous,
                on_done=lambda row, result: out.__setitem__(row.key, result.token_ids))
    return [out[i] for i in range(len(prompts))]


def alone(loaded, prompt: list[int], config: DecodingConfig) -> list[int]:
    source = plain_tokens(CachedLM(loaded.model), prompt, config, make_generator(config.seed))
    return run_sequence(source, loaded.tokenizer, prompt, config, loaded.eos_token_ids, loaded.context_length).token_ids


def hf_batch_greedy(loaded, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """HF `generate()` greedy on the left-padded batch; each row cut after its first end-of-sequence token."""
    width = max(map(len, prompts))
    pad = min(loaded.eos_token_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = loaded.model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=pad)
    rows = []
    for row in out[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in loaded.eos_token_ids]
        rows.append(row[:ends[0] + 1] if ends else row)
    return rows


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def top2_gap(loaded, context: list[int]) -> float:
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([context])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def test_greedy_rows_equal_hf_on_the_same_padded_batch_char_model(char_lm) -> None:
    prompts = [char_lm.tokenizer(p)["input_ids"] for p in CHAR_PROMPTS]
    got = batched(char_lm, prompts, DecodingConfig(temperature=0, max_new_tokens=40))
    assert got == hf_batch_greedy(char_lm, prompts, 40)


def test_greedy_rows_equal_hf_on_the_same_padded_batch_wide_model(wide_lm) -> None:
    prompts = [wide_lm.tokenizer(p)["input_ids"] for p in TEXT_PROMPTS]
    got = batched(wide_lm, prompts, DecodingConfig(temperature=0, max_new_tokens=24))
    assert got == hf_batch_greedy(wide_lm, prompts, 24)


def test_greedy_rows_equal_hf_on_the_same_padded_batch_embedded_model(embedded) -> None:
    prompts = [embedded.tokenizer(p)["input_ids"] for p in TEXT_PROMPTS]
    got = batched(embedded, prompts, DecodingConfig(temperature=0, max_new_tokens=16))
    assert got == hf_batch_greedy(embedded, prompts, 16)


@pytest.mark.parametrize("fixture,texts,new", [("char_lm", CHAR_PROMPTS, 40), ("wide_lm", TEXT_PROMPTS, 24),
                                                ("embedded", TEXT_PROMPTS, 16)])
def test_greedy_rows_differ_from_each_prompt_alone_only_at_a_near_tie(request, fixture, texts, new) -> None:
    loaded = request.getfixturevalue(fixture)
    config = DecodingConfig(temperature=0, max_new_tokens=new)
    prompts = [loaded.tokenizer(p)["input_ids"] for p in texts]
    for prompt, row in zip(prompts, batched(loaded, prompts, config)):
        single = alone(loaded, prompt, config)
        at = first_divergence(row, single)
        if at is not None:
            assert top2_gap(loaded, prompt + single[:at]) < 1e-3, (prompt, at)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_continuous_and_static_batches_give_the_rows_of_one_full_batch(char_lm, batch_size: int) -> None:
    prompts = [char_lm.tokenizer(p)["input_ids"] for p in CHAR_PROMPTS]
    config = DecodingConfig(temperature=0, max_new_tokens=30)
    full = batched(char_lm, prompts, config, batch_size=len(prompts))
    assert batched(char_lm, prompts, config, batch_size=batch_size, continuous=True) == full
    assert batched(char_lm, prompts, config, batch_size=batch_size, continuous=False) == full


def test_sampled_rows_do_not_depend_on_the_batch(char_lm) -> None:
    """Same seed and index: the same sample in a batch of 8, of 3 (continuous), or alone (row 0 = --seed)."""
    prompts = [char_lm.tokenizer(p)["input_ids"] for p in CHAR_PROMPTS]
    config = DecodingConfig(seed=7, top_p=0.9, presence_penalty=0.5, max_new_tokens=20)
    full = batched(char_lm, prompts, config)
    assert batched(char_lm, prompts, config, batch_size=3) == full
    assert full[0] == alone(char_lm, prompts[0], config)
    assert len(set(map(tuple, full))) > 1


def test_n_samples_share_one_prefill_and_have_their_own_streams(char_lm, monkeypatch) -> None:
    ids = char_lm.tokenizer("abc")["input_ids"]
    config = DecodingConfig(seed=3, n=6, max_new_tokens=12, ignore_eos=True)
    prefills = []
    original = RowCache.add
    monkeypatch.setattr(RowCache, "add", lambda self, prompts: prefills.append(len(prompts)) or original(self, prompts))
    results = sample_rows(RowCache(char_lm.model), ids, config, limits(char_lm))
    assert prefills == [1]
    assert len({tuple(r.token_ids) for r in results}) == 6
    assert all(len(r.token_ids) == 12 and r.prompt_token_ids == ids for r in results)
    assert results[0].token_ids == alone(char_lm, ids, config)  # sample 0 draws with the seed itself
    again = sample_rows(RowCache(char_lm.model), ids, config, limits(char_lm))
    assert [r.token_ids for r in again] == [r.token_ids for r in results]


def test_rows_with_their_own_settings_share_a_batch(char_lm) -> None:
    """Greedy and sampled rows, with and without penalties, in one batch: each row equals its prompt
    decoded alone with the same settings and a generator seeded the same way."""
    prompts = [char_lm.tokenizer(p)["input_ids"] for p in CHAR_PROMPTS[:4]]
    configs = [DecodingConfig(temperature=0, max_new_tokens=5), DecodingConfig(seed=1, max_new_tokens=9),
               DecodingConfig(temperature=0, max_new_tokens=20, repetition_penalty=2.0),
               DecodingConfig(seed=2, top_k=2, frequency_penalty=0.5)]
    rows = [Row(i, p, c, make_generator(c.seed)) for i, (p, c) in enumerate(zip(prompts, configs))]
    out = {}
    decode_rows(RowCache(char_lm.model), rows, limits(char_lm), on_done=lambda r, res: out.__setitem__(r.key, res))
    for i, config in enumerate(configs):
        assert out[i].token_ids == alone(char_lm, prompts[i], config), i


def test_row_cache_keeps_rows_left_padded_and_cuts_padding_columns(char_lm) -> None:
    cache = RowCache(char_lm.model)
    first = cache.add([[3, 4, 5, 6, 7], [8]])
    assert cache.lengths.tolist() == [5, 1] and cache.width == 5
    cache.step(torch.tensor([3, 3]))
    cache.select([1])  # the long row leaves: its columns of padding in row 1 go too
    assert cache.width == 2 and cache.cache.get_seq_length() == 2
    more = cache.add([[4, 5, 6, 7]])  # wider than the cache: the old row is padded on the left
    assert cache.lengths.tolist() == [2, 4] and cache.cache.get_seq_length() == 4
    after = cache.step(torch.tensor([9, 9]))
    fresh = RowCache(char_lm.model)
    expected = fresh.add([[8, 3, 9], [4, 5, 6, 7, 9]])
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert first.shape == (2, 13) and more.shape == (1, 13)


def test_serial_rows_give_the_rows_of_the_batched_cache(char_lm) -> None:
    """The fallback for a model with its own single-sequence cache (the lean int4 Llama): same rows."""
    prompts = [char_lm.tokenizer(p)["input_ids"] for p in CHAR_PROMPTS[:5]]
    config = DecodingConfig(seed=2, top_k=5, max_new_tokens=15)
    rows = [Row(i, p, config, row_generator(2, i)) for i, p in enumerate(prompts)]
    serial: dict[int, list[int]] = {}
    decode_rows(SerialRows(char_lm.engine.sequence, char_lm.device), rows, limits(char_lm), batch_size=3,
                on_done=lambda row, result: serial.__setitem__(row.key, result.token_ids))
    assert [serial[i] for i in range(5)] == batched(char_lm, prompts, config, batch_size=3)
    n = DecodingConfig(seed=2, n=4, max_new_tokens=10, ignore_eos=True)
    ids = prompts[0]
    assert ([r.token_ids for r in sample_rows(SerialRows(char_lm.engine.sequence, char_lm.device), ids, n, limits(char_lm))]
            == [r.token_ids for r in sample_rows(RowCache(char_lm.model), ids, n, limits(char_lm))])
