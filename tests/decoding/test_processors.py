"""Each processor equals its oracle on the same logits: HF's warpers and repetition penalty, and the
OpenAI formula for frequency and presence penalties (with both scopes and windows)."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmgen.decoding import processors
from llmgen.decoding.config import DecodingConfig

ROWS, VOCAB = 6, 97


def random_logits(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(ROWS, VOCAB, generator=gen) * 3


def random_context(seed: int, length: int = 40) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, VOCAB, (ROWS, length), generator=gen)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_matches_hf(seed: int, temperature: float) -> None:
    logits = random_logits(seed)
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    torch.testing.assert_close(processors.apply_temperature(logits, temperature), expected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 10, 50, 96])
def test_top_k_matches_hf(seed: int, k: int) -> None:
    logits = random_logits(seed)
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(processors.apply_top_k(logits, k), expected)


def test_top_k_keeps_ties_at_the_boundary() -> None:
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    kept = processors.apply_top_k(logits, 2).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.05, 0.3, 0.75, 0.9, 0.999])
def test_top_p_matches_hf(seed: int, p: float) -> None:
    logits = random_logits(seed)
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(processors.apply_top_p(logits, p), expected)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = processors.apply_top_p(probs.log(), 0.8).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = processors.apply_top_p(probs.log(), 0.81).isfinite()
    assert kept.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
def test_min_p_matches_hf(seed: int, p: float) -> None:
    logits = random_logits(seed)
    expected = MinPLogitsWarper(min_p=p)(None, logits.clone())
    assert torch.equal(processors.apply_min_p(logits, p), expected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_hf_over_the_whole_context(seed: int, penalty: float) -> None:
    logits, context = random_logits(seed), random_context(seed)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(context, logits.clone())
    counts = torch.stack([processors.token_counts(row.tolist(), VOCAB) for row in context])
    torch.testing.assert_close(processors.apply_repetition_penalty(logits, counts, penalty), expected)


@pytest.mark.parametrize("prompt_len", [0, 7, 25])
def test_repetition_penalty_scope_generated_matches_hf_prompt_ignore_length(prompt_len: int) -> None:
    logits, context = random_logits(3), random_context(3)
    expected = RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=prompt_len)(context, logits.clone())
    config = DecodingConfig(repetition_penalty=1.5, penalty_scope="generated")
    rows = []
    for row in context.tolist():
        tokens = processors.penalty_context(row[:prompt_len], row[prompt_len:], config)
        rows.append(processors.token_counts(tokens, VOCAB))
    got = processors.apply_penalties(logits, torch.stack(rows), config)
    torch.testing.assert_close(got, expected)


def openai_penalties(logits: list[float], tokens: list[int], frequency: float, presence: float) -> list[float]:
    """The OpenAI formula, written out literally: mu[j] -= c[j] * F + float(c[j] > 0) * P."""
    out = list(logits)
    for j in range(len(out)):
        c = tokens.count(j)
        out[j] = out[j] - c * frequency - (1.0 if c > 0 else 0.0) * presence
    return out


@pytest.mark.parametrize("scope", ["generated", "all"])
@pytest.mark.parametrize("window", [0, 1, 5, 30])
@pytest.mark.parametrize("frequency,presence", [(0.5, 0.0), (0.0, 1.2), (-0.7, 2.0), (2.0, -2.0)])
def test_frequency_presence_match_openai_formula(scope: str, window: int, frequency: float, presence: float) -> None:
    config = DecodingConfig(frequency_penalty=frequency, presence_penalty=presence,
                            penalty_scope=scope, penalty_window=window)
    logits, context = random_logits(7), random_context(7)
    prompt_len = 15
    for row in range(ROWS):
        prompt, generated = context[row, :prompt_len].tolist(), context[row, prompt_len:].tolist()
        scope_tokens = generated if scope == "generated" else prompt + generated
        counted = scope_tokens[-window:] if window else scope_tokens
        expected = openai_penalties(logits[row].tolist(), counted, frequency, presence)
        counts = processors.token_counts(processors.penalty_context(prompt, generated, config), VOCAB)
        got = processors.apply_penalties(logits[row:row + 1], counts[None], config)
        torch.testing.assert_close(got[0], torch.tensor(expected))


def test_window_counts_only_the_last_tokens() -> None:
    config = DecodingConfig(penalty_window=2, penalty_scope="all")
    assert processors.penalty_context([1, 2], [3, 4, 5], config) == [4, 5]
    config = DecodingConfig(penalty_window=4, penalty_scope="generated")
    assert processors.penalty_context([1, 2], [3, 4, 5], config) == [3, 4, 5]


def test_chain_order_is_penalties_temperature_top_k_top_p_min_p() -> None:
    """The chain equals HF's processors applied one by one in the documented order."""
    logits, context = random_logits(11), random_context(11)
    config = DecodingConfig(repetition_penalty=1.3, penalty_scope="all", temperature=0.7,
                            top_k=40, top_p=0.8, min_p=0.05)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(context, logits.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.8), MinPLogitsWarper(0.05)):
        expected = warper(context, expected)
    counts = torch.stack([processors.token_counts(row.tolist(), VOCAB) for row in context])
    torch.testing.assert_close(processors.process(logits, counts, config), expected)


def test_processors_do_not_mutate_their_input() -> None:
    logits, context = random_logits(2), random_context(2)
    counts = torch.stack([processors.token_counts(row.tolist(), VOCAB) for row in context])
    before = logits.clone()
    config = DecodingConfig(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.5,
                            temperature=0.7, top_k=40, top_p=0.8, min_p=0.05)
    processors.process(logits, counts, config)
    assert torch.equal(logits, before)


def test_greedy_distribution_is_one_hot_at_the_penalised_argmax() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.9]])
    counts = torch.tensor([[0.0, 1.0, 0.0]])
    config = DecodingConfig(temperature=0, presence_penalty=0.5)
    assert processors.distribution(logits, counts, config).tolist() == [[0.0, 0.0, 1.0]]
