"""Speculative decoding end to end: greedy equals plain greedy token for token; caches roll back to the
accepted prefix; the statistics add up. (Distribution tests: test_speculative_distribution.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import (
    DraftModelProposer,
    FixedGamma,
    Proposal,
    SpeculativeStats,
    check_compatible,
    speculate,
    speculative_tokens,
)
from llmgen.decoding.speculative.runner import parse_gamma
from llmgen.errors import UsageError
from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.fixture(scope="module")
def draft(draft_model: Path) -> models.LoadedModel:
    return models.load(str(draft_model))


def plain_greedy(loaded: models.LoadedModel, prompt: Sequence[int], config: DecodingConfig) -> list[int]:
    tokens = (t.id for t in plain_tokens(CachedLM(loaded.model), prompt, config, make_generator(0)))
    return [next(tokens) for _ in range(config.max_new_tokens)]


def ids(loaded: models.LoadedModel, text: str) -> list[int]:
    return loaded.tokenizer(text)["input_ids"]


GREEDY = DecodingConfig(temperature=0, max_new_tokens=24, ignore_eos=True)
GREEDY_PENALIZED = GREEDY.replace(frequency_penalty=0.7, presence_penalty=0.3, repetition_penalty=1.2)


@pytest.mark.parametrize("config", [GREEDY, GREEDY_PENALIZED], ids=["plain", "penalties"])
@pytest.mark.parametrize("gamma", [1, 2, 5, 40, "auto"])
@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_greedy_equals_plain_greedy(target, draft, kind: str, gamma, config: DecodingConfig) -> None:
    prompt = ids(target, "abc abc ab")
    expected = plain_greedy(target, prompt, config)
    result = speculate(target, draft if kind == "model" else None, prompt, config, gamma=gamma,
                       ngram_min=1, generator=make_generator(0))
    assert result.token_ids == expected
    stats = result.stats
    assert stats["generated_tokens"] == config.max_new_tokens
    assert stats["tokens_per_target_forward"] == pytest.approx(config.max_new_tokens / stats["target_forwards"],
                                                               abs=1e-3)
    assert sum(stats["acceptance_histogram"]) <= stats["target_forwards"]
    assert stats["accepted_tokens"] <= stats["draft_tokens"]


def test_greedy_stops_at_eos_like_plain(target, draft) -> None:
    config = DecodingConfig(temperature=0, max_new_tokens=60)
    prompt = ids(target, "h a")
    plain = speculate(target, None, prompt, config, gamma=1)  # gamma 1 with no match = plain steps
    for kind in (draft, None):
        result = speculate(target, kind, prompt, config, gamma=4, ngram_min=1)
        assert result.token_ids == plain.token_ids
        assert result.finish_reason == plain.finish_reason


def test_greedy_on_the_wide_tokenizer_with_ngram(wide_model: Path) -> None:
    loaded = models.load(str(wide_model))
    prompt = ids(loaded, "The cat sat on the mat. The cat sat on the mat. The cat")
    config = GREEDY.replace(max_new_tokens=16)
    expected = plain_greedy(loaded, prompt, config)
    for gamma in (1, 3, 30):
        assert speculate(loaded, None, prompt, config, gamma=gamma, ngram_min=1).token_ids == expected


def test_small_draft_on_the_embedded_model(embedded) -> None:
    small = models.load("small")
    assert small.dtype == torch.bfloat16
    check_compatible(embedded, small)
    prompt = ids(embedded, "Correct the spelling: The quik brown fox jumpd over the lazzy dog. Corrected:")
    config = GREEDY.replace(max_new_tokens=10)
    expected = plain_greedy(embedded, prompt, config)
    for gamma in (1, 16):  # 16 > the 10 tokens to generate
        assert speculate(embedded, small, prompt, config, gamma=gamma).token_ids == expected
    assert speculate(embedded, None, prompt, config, gamma=16, ngram_min=1).token_ids == expected


def test_a_draft_with_another_vocabulary_drafts_across_tokenizers(target, wide_model: Path) -> None:
    """No longer refused: its text is re-read in the target's tokens (tests/decoding/test_speculative_cross.py)."""
    wide = models.load(str(wide_model))
    check_compatible(target, wide)
    prompt = ids(target, "ab")
    assert speculate(target, wide, prompt, GREEDY, gamma=2).token_ids == plain_greedy(target, prompt, GREEDY)


@pytest.mark.parametrize("bad", ["0", "-3", "two", "1.5", ""])
def test_gamma_must_be_positive_or_auto(bad: str) -> None:
    with pytest.raises(UsageError, match="--gamma"):
        parse_gamma(bad)


def test_gamma_parses() -> None:
    assert parse_gamma("7") == 7 and parse_gamma("auto") == "auto" and parse_gamma(3) == 3


# ---------------------------------------------------------------------------------------------- caches

def cache_tensors(lm: CachedLM) -> list[torch.Tensor]:
    return [t for layer in lm.cache.layers for t in (layer.keys, layer.values)]


def assert_cache_is_fresh_run(lm: CachedLM, model, tokens: Sequence[int]) -> None:
    """The cache of `lm` equals the cache of a fresh run over `tokens`."""
    fresh = CachedLM(model)
    fresh.forward(tokens)
    assert lm.length == fresh.length == len(tokens)
    for got, want in zip(cache_tensors(lm), cache_tensors(fresh), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


class FixedProposer:
    """Proposes the given tokens once (one-hot), then nothing."""

    name = "fixed"

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def prefill(self, prompt_ids) -> None:
        pass

    def room(self, length: int) -> int:
        return 100

    def rollback(self, length: int) -> None:
        pass

    def propose(self, prompt_ids, generated, gamma, generator) -> Proposal:
        tokens, self.tokens = self.tokens[:gamma], []
        return Proposal(tokens, None)


@pytest.mark.parametrize("wrong_at", [0, 1, 3])
def test_target_cache_after_a_rejected_round_equals_a_fresh_run(target, wrong_at: int) -> None:
    prompt = ids(target, "abc ab")
    config = GREEDY.replace(max_new_tokens=8)
    right = plain_greedy(target, prompt, config)
    proposed = right[:4]
    proposed[wrong_at] = (right[wrong_at] + 1) % 13
    lm = CachedLM(target.model)
    rounds = []
    tokens = speculative_tokens(lm, FixedProposer(proposed), prompt, config, make_generator(0), FixedGamma(4),
                                config.max_new_tokens, on_round=rounds.append)
    got = [next(tokens).id for _ in range(wrong_at + 1)]
    assert got == right[:wrong_at + 1]
    assert rounds[0].accepted == wrong_at and rounds[0].origin == "resampled"
    # The target holds the prompt and the accepted draft tokens; the resampled token is pending.
    assert_cache_is_fresh_run(lm, target.model, [*prompt, *right[:wrong_at]])


def test_draft_cache_follows_the_accepted_prefix(target, draft) -> None:
    prompt = ids(target, "h abc")
    config = GREEDY.replace(max_new_tokens=30)
    target_lm, draft_lm = CachedLM(target.model), CachedLM(draft.model)
    proposer = DraftModelProposer(draft_lm, config, draft.context_length)
    sequence = list(prompt)
    outcomes = set()

    def check(round_) -> None:
        # Called after both caches rolled back; `sequence` holds the tokens before this round.
        gamma = len(round_.proposed)
        accepted = [*sequence, *round_.proposed[:round_.accepted]]
        assert_cache_is_fresh_run(target_lm, target.model, accepted)
        # The draft never read its own last proposal: on full acceptance it lags by one token.
        lag = 1 if round_.accepted == gamma else 0
        assert_cache_is_fresh_run(draft_lm, draft.model, accepted[:len(accepted) - lag])
        outcomes.add(round_.accepted == gamma)

    tokens = speculative_tokens(target_lm, proposer, prompt, config, make_generator(0), FixedGamma(3),
                                config.max_new_tokens, on_round=check)
    for token in tokens:
        sequence.append(token.id)
    assert sequence[len(prompt):] == plain_greedy(target, prompt, config)
    assert outcomes == {True, False}, "the test needs both full acceptances and rejections"


# ----------------------------------------------------------------------------------------- statistics

def test_statistics_add_up() -> None:
    stats = SpeculativeStats()
    for proposed, accepted in ((4, 4), (4, 1), (0, 0), (2, 0)):
        stats.record(proposed, accepted)
    stats.tokens = 5 + 2 + 1 + 1
    d = stats.as_dict()
    assert d["target_forwards"] == 4 and d["draft_tokens"] == 10 and d["accepted_tokens"] == 5
    assert d["acceptance_rate"] == 0.5
    assert d["alpha"] == round(5 / 7, 4)  # tested: 4, then 1 + 1, then 0 + 1
    assert d["acceptance_histogram"] == [1, 1, 0, 0, 1]
    assert d["tokens_per_target_forward"] == 2.25
    alpha, mean_gamma = 5 / 7, 10 / 3
    expected = (3 * (1 - alpha ** (mean_gamma + 1)) / (1 - alpha) + 1) / 4
    assert d["expected_tokens_per_forward"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_a_one_token_prompt(target, draft, kind: str) -> None:
    prompt = ids(target, "a")
    assert len(prompt) == 1
    config = GREEDY.replace(max_new_tokens=12)
    result = speculate(target, draft if kind == "model" else None, prompt, config, gamma=3, ngram_min=1)
    assert result.token_ids == plain_greedy(target, prompt, config)


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_gamma_is_capped_by_the_context(target, draft, kind: str) -> None:
    prompt = ids(target, ("abc " * 70)[:250])  # the tiny models' context is 256 tokens: 6 are left
    config = GREEDY.replace(max_new_tokens=100)
    result = speculate(target, draft if kind == "model" else None, prompt, config, gamma=16, ngram_min=1)
    assert len(result.token_ids) == 6
    assert result.token_ids == plain_greedy(target, prompt, config.replace(max_new_tokens=6))
