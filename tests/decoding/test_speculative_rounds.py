"""Rounds of γ = 0 are plain decoding, draw for draw; the statistics and the trace carry the γ chosen and
what `--gamma auto` expected against what it got."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import FixedGamma, NgramProposer, speculate, speculative_tokens
from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.mark.parametrize("config", [DecodingConfig(temperature=0, max_new_tokens=20, ignore_eos=True),
                                    DecodingConfig(temperature=1.0, top_p=0.9, frequency_penalty=0.5,
                                                   max_new_tokens=20, ignore_eos=True)],
                         ids=["greedy", "sampled"])
def test_gamma_zero_rounds_are_plain_decoding_draw_for_draw(target, config: DecodingConfig) -> None:
    prompt = target.tokenizer("abc abc ab")["input_ids"]
    plain = plain_tokens(CachedLM(target.model), prompt, config, make_generator(7))
    expected = [next(plain).id for _ in range(config.max_new_tokens)]
    rounds = []
    source = speculative_tokens(CachedLM(target.model), NgramProposer(4, 1), prompt, config, make_generator(7),
                                FixedGamma(0), config.max_new_tokens, on_round=rounds.append)
    assert [t.id for t in source] == expected  # the same seed gives the same tokens: the same random draws
    assert {r.origin for r in rounds} == {"target"} and all(r.gamma == 0 for r in rounds)


def test_statistics_and_trace_show_the_gamma_chosen_and_the_expected_gain(target) -> None:
    config = DecodingConfig(temperature=0, max_new_tokens=40, ignore_eos=True)
    prompt = target.tokenizer("abc abc abc abc ab")["input_ids"]
    rounds = []
    result = speculate(target, None, prompt, config, gamma="auto", ngram_min=1, on_round=rounds.append)
    stats = result.stats
    assert sum(stats["gamma_histogram"]) == stats["target_forwards"] == len(rounds)
    assert stats["gamma_histogram"][1:] and sum(stats["gamma_histogram"][1:]) == sum(1 for r in rounds if r.proposed)
    assert stats["expected_speedup"] > 0 and stats["realised_speedup"] > 0
    traced = [r.as_json() for r in rounds]
    assert all(t["gamma"] >= len(t["proposed"]) for t in traced)
    # Costs are in seconds once the first round is timed: from then on every round has an expectation.
    assert all(t["expected_speedup"] is not None and t["realised_speedup"] is not None for t in traced[1:])
    fixed = speculate(target, None, prompt, config, gamma=2, ngram_min=1).stats
    assert fixed["expected_speedup"] is None and sum(fixed["gamma_histogram"]) == fixed["target_forwards"]
