"""--logprobs: what each token's entry holds, and that plain, speculative (model and n-gram draft) and
batched decoding report the same numbers for the same tokens."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from llmgen.decoding.batch import sample_rows
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob, to_json, token_logprobs
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.processors import penalty_context, process, token_counts
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import run_sequence
from llmgen.decoding.speculative import speculate
from llmgen.errors import UsageError
from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM, row_cache
from llmgen.loading.loaded import ModelInfo

GREEDY = DecodingConfig(temperature=0, max_new_tokens=20, ignore_eos=True)
PENALISED = GREEDY.replace(frequency_penalty=0.7, presence_penalty=0.3, repetition_penalty=1.2)
SAMPLED = DecodingConfig(temperature=0.8, top_k=8, top_p=0.9, max_new_tokens=20, ignore_eos=True,
                         repetition_penalty=1.1, seed=5)


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.fixture(scope="module")
def draft(draft_model: Path) -> models.LoadedModel:
    return models.load(str(draft_model))


def plain(loaded: models.LoadedModel, prompt: list[int], config: DecodingConfig, spec: LogprobSpec, seed: int = 0):
    source = plain_tokens(CachedLM(loaded.model), prompt, config, make_generator(seed), spec)
    return run_sequence(source, loaded.tokenizer, prompt, config, loaded.eos_token_ids, loaded.context_length)


def forced(loaded: models.LoadedModel, prompt: list[int], tokens: Sequence[int], config: DecodingConfig,
           spec: LogprobSpec) -> list[TokenLogprob]:
    """Plain decoding's entries for given tokens: one forward per token, the same chain and function."""
    lm = CachedLM(loaded.model)
    logits = lm.forward(prompt)
    out = []
    for i, token in enumerate(tokens):
        counts = None
        if config.uses_penalties:
            counts = token_counts(penalty_context(prompt, tokens[:i], config), logits.shape[-1])[None]
        out.append(token_logprobs(logits, process(logits, counts, config), [token], spec)[0])
        logits = lm.forward([token])
    return out


def assert_close(rows: list[dict], expected: list[dict], tol: float = 1e-4) -> None:
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    for r, e in zip(rows, expected):
        assert r["logprob"] == pytest.approx(e["logprob"], abs=tol)
        assert [t["id"] for t in r["top_logprobs"]] == [t["id"] for t in e["top_logprobs"]]
        for a, b in zip(r["top_logprobs"], e["top_logprobs"]):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=tol)


def test_raw_is_the_models_log_softmax_and_top_is_sorted(target) -> None:
    prompt = target.tokenizer("abc ab")["input_ids"]
    result = plain(target, prompt, GREEDY.replace(max_new_tokens=6), LogprobSpec(5, "raw"))
    assert len(result.logprobs) == len(result.token_ids)
    lm = CachedLM(target.model)
    logits = lm.forward(prompt)
    for entry, token in zip(result.logprobs, result.token_ids):
        expected = logits.log_softmax(-1)[0]
        assert entry["id"] == token and entry["token"] == target.tokenizer.decode([token])
        assert entry["logprob"] == pytest.approx(float(expected[token]), abs=1e-5)
        tops = [t["logprob"] for t in entry["top_logprobs"]]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert tops[0] == pytest.approx(float(expected.max()), abs=1e-5)
        assert set(entry["top_logprobs"][0]) == {"id", "token", "logprob"}
        logits = lm.forward([token])


def test_processed_is_the_sampling_distribution_and_cut_tokens_are_left_out() -> None:
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0, -1.0]])
    config = DecodingConfig(top_k=2, temperature=0.5)
    processed = process(logits, None, config)
    entry = token_logprobs(logits, processed, [1], LogprobSpec(4, "processed"))[0]
    expected = (logits[0, :2] / 0.5).log_softmax(-1)
    assert entry.logprob == pytest.approx(float(expected[1]))
    assert [i for i, _ in entry.top[:2]] == [0, 1] and entry.top[2][1] == -math.inf  # cut: -inf
    rows = to_json([entry], type("T", (), {"decode": staticmethod(lambda ids: str(ids[0]))})())
    assert [t["id"] for t in rows[0]["top_logprobs"]] == [0, 1]  # strict JSON has no -inf: cut tokens left out
    raw = token_logprobs(logits, processed, [1], LogprobSpec(4, "raw"))[0]
    assert raw.logprob == pytest.approx(float(logits.log_softmax(-1)[0, 1]))


@pytest.mark.parametrize("top", [-1, 21, True])
def test_spec_refuses_out_of_range(top) -> None:
    with pytest.raises(UsageError, match="--logprobs must be an integer from 0 to 20"):
        LogprobSpec(top)
    with pytest.raises(UsageError, match="--logprobs-mode"):
        LogprobSpec(2, "softmax")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["raw", "processed"])
@pytest.mark.parametrize("config", [GREEDY, PENALISED], ids=["greedy", "penalties"])
@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_speculative_logprobs_equal_plain_for_greedy(target, draft, kind, config, mode) -> None:
    prompt = target.tokenizer("abc abc abc ab")["input_ids"]
    spec = LogprobSpec(4, mode)
    expected = plain(target, prompt, config, spec)
    result = speculate(target, draft if kind == "model" else None, prompt, config, gamma=4, ngram_min=1,
                       generator=make_generator(0), logprobs=spec)
    assert result.token_ids == expected.token_ids
    assert result.stats["accepted_tokens"] > 0  # accepted draft tokens are among those compared
    assert_close(result.logprobs, expected.logprobs)


@pytest.mark.parametrize("mode", ["raw", "processed"])
@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_speculative_logprobs_equal_plain_when_sampling(target, draft, kind, mode) -> None:
    prompt = target.tokenizer("abc abc abc ab")["input_ids"]
    spec = LogprobSpec(3, mode)
    result = speculate(target, draft if kind == "model" else None, prompt, SAMPLED, gamma=3, ngram_min=1,
                       generator=make_generator(1), logprobs=spec)
    assert result.stats["accepted_tokens"] > 0
    expected = to_json(forced(target, prompt, result.token_ids, SAMPLED, spec), target.tokenizer)
    assert_close(result.logprobs, expected)


def test_plain_source_equals_the_forced_walk(target) -> None:
    prompt = target.tokenizer("hab")["input_ids"]
    spec = LogprobSpec(2, "processed")
    result = plain(target, prompt, SAMPLED, spec, seed=3)
    expected = to_json(forced(target, prompt, result.token_ids, SAMPLED, spec), target.tokenizer)
    assert_close(result.logprobs, expected, tol=1e-6)


def test_without_logprobs_nothing_is_added(target) -> None:
    prompt = target.tokenizer("ab")["input_ids"]
    source = plain_tokens(CachedLM(target.model), prompt, GREEDY, make_generator(0))
    result = run_sequence(source, target.tokenizer, prompt, GREEDY, target.eos_token_ids, target.context_length)
    assert result.logprobs is None and "logprobs" not in result.as_json()


@pytest.mark.parametrize("config", [GREEDY, SAMPLED.replace(n=3)], ids=["greedy", "sampled"])
def test_batched_rows_report_what_plain_decoding_reports(target, config) -> None:
    prompt = target.tokenizer("abc ab")["input_ids"]
    spec = LogprobSpec(3, "processed")
    limits = ModelInfo(target.tokenizer, target.eos_token_ids, target.context_length)
    results = sample_rows(row_cache(target.model), prompt, config.replace(n=3), limits, logprobs=spec)
    for result in results:
        expected = to_json(forced(target, prompt, result.token_ids, config, spec), target.tokenizer)
        assert_close(result.logprobs, expected)


@pytest.mark.parametrize(("config", "mode"), [
    (DecodingConfig(num_beams=3, n=3, max_new_tokens=12, length_penalty=1.3), "raw"),
    (DecodingConfig(num_beams=4, n=4, max_new_tokens=12, repetition_penalty=1.3, frequency_penalty=0.4,
                    no_repeat_ngram_size=2, early_stopping="never"), "processed"),
], ids=["plain", "penalties-ngram"])
def test_beam_logprobs_add_up_to_the_unnormalised_score(target, config, mode) -> None:
    from llmgen.decoding.beam import beam_search, to_result

    prompt = target.tokenizer("abc ab")["input_ids"]
    found = beam_search(target.engine, prompt, config, target.eos_token_ids, config.max_new_tokens,
                        logprobs=LogprobSpec(2, mode))
    assert len(found.hypotheses) == config.num_beams
    for hypothesis in found.hypotheses:
        result = to_result(hypothesis, target.tokenizer, prompt, config, found.stats)
        assert [e["id"] for e in result.logprobs] == result.token_ids
        total = sum(e["logprob"] for e in result.logprobs)
        assert total / len(result.token_ids) ** config.length_penalty == pytest.approx(result.score, abs=1e-4)
        assert all(len(e["top_logprobs"]) == 2 for e in result.logprobs)


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_logprobs_match_hf_generate_scores(target, mode) -> None:
    """HF as the oracle: output_logits are the raw logits, output_scores the processed ones (greedy:
    after the repetition penalty, which both apply the same way)."""
    config = GREEDY.replace(max_new_tokens=10, repetition_penalty=1.3, penalty_scope="all")
    prompt = target.tokenizer("abc ab")["input_ids"]
    result = plain(target, prompt, config, LogprobSpec(3, mode))
    out = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=10,
                                repetition_penalty=1.3, output_logits=True, output_scores=True,
                                return_dict_in_generate=True)  # NOTE: no min_new_tokens: it would cut EOS
    hf_tokens = out.sequences[0, len(prompt):].tolist()
    assert len(hf_tokens) >= 5 and hf_tokens == result.token_ids[:len(hf_tokens)]
    rows = out.logits if mode == "raw" else out.scores
    for entry, row in zip(result.logprobs, rows):
        expected = row[0].float().log_softmax(-1)
        assert entry["logprob"] == pytest.approx(float(expected[entry["id"]]), abs=1e-5)
        assert [t["id"] for t in entry["top_logprobs"]] == expected.topk(3).indices.tolist()
