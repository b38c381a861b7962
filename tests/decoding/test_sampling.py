"""The random pick draws exactly from the processed distribution, and seeds make it reproducible.

Expected distributions are computed with HF's own processors (the oracle), not with ours.
"""

from __future__ import annotations

import itertools

import torch
from stats_helpers import chi_square_pvalue, total_variation
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.processors import process
from llmgen.decoding.sampling import make_generator, pick, random_pick
from llmgen.loading.engines.torch import CachedLM

SAMPLES = 20_000
ALL_ON = DecodingConfig(temperature=0.8, top_k=8, top_p=0.95, min_p=0.02,
                        frequency_penalty=0.4, presence_penalty=0.3, repetition_penalty=1.2)


def oracle_distribution(logits: torch.Tensor, tokens: list[int], config: DecodingConfig) -> torch.Tensor:
    """The target distribution via the OpenAI formula + HF warpers, independent of llmgen.decoding.processors."""
    logits = logits.clone().float()
    for j in set(tokens):
        c = tokens.count(j)
        if config.repetition_penalty != 1.0:
            value = logits[j]
            logits[j] = value / config.repetition_penalty if value > 0 else value * config.repetition_penalty
        logits[j] -= c * config.frequency_penalty + config.presence_penalty
    scores = logits[None]
    for warper in (TemperatureLogitsWarper(config.temperature), TopKLogitsWarper(config.top_k),
                   TopPLogitsWarper(config.top_p), MinPLogitsWarper(config.min_p)):
        scores = warper(None, scores)
    return scores.softmax(-1)[0]


def test_random_pick_follows_unnormalised_weights() -> None:
    weights = torch.tensor([0.0, 2.0, 1.0, 0.5, 0.0, 0.5])
    gen = make_generator(0)
    draws = random_pick(weights.expand(SAMPLES, -1), gen).tolist()
    expected = {i: float(w / weights.sum()) for i, w in enumerate(weights)}
    assert chi_square_pvalue(draws, expected) > 1e-3
    assert 0 not in draws and 4 not in draws


def test_pick_with_every_option_on_matches_the_processed_distribution() -> None:
    vocab = 13
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(5)) * 0.8
    context = [3, 3, 7, 1, 9]
    counts = torch.bincount(torch.tensor(context), minlength=vocab).float()
    gen = make_generator(1)
    processed = process(logits.expand(SAMPLES, -1), counts.expand(SAMPLES, -1), ALL_ON)
    draws = pick(processed, ALL_ON.greedy, [gen] * SAMPLES).tolist()
    expected = oracle_distribution(logits, context, ALL_ON)
    assert (expected > 0).sum() >= 3, "the options should leave a real choice"
    assert chi_square_pvalue(draws, dict(enumerate(expected.tolist()))) > 1e-3
    assert total_variation(draws, dict(enumerate(expected.tolist()))) < 0.02


def test_two_token_sequences_follow_the_exact_joint_distribution(char_lm) -> None:
    """10^4 seeded two-token runs of the real loop on a 13-token model, against the joint
    distribution enumerated from the model with the oracle processors (penalties count the first token)."""
    config = ALL_ON.replace(penalty_scope="generated")
    prompt = char_lm.tokenizer("abc")["input_ids"]
    model = char_lm.model
    with torch.no_grad():
        first = model(torch.tensor([prompt])).logits[0, -1]
        p1 = oracle_distribution(first, [], config)
        joint = {}
        for a in range(len(p1)):
            if p1[a] == 0:
                continue
            second = model(torch.tensor([prompt + [a]])).logits[0, -1]
            p2 = oracle_distribution(second, [a], config)
            for b in range(len(p2)):
                joint[(a, b)] = float(p1[a] * p2[b])
    samples = []
    gen = make_generator(1234)
    for _ in range(10_000):
        tokens = (t.id for t in plain_tokens(CachedLM(model), prompt, config, gen))
        samples.append(tuple(itertools.islice(tokens, 2)))
    assert chi_square_pvalue(samples, joint) > 1e-3


def first_tokens(lm, seed: int | None, count: int = 12) -> list[int]:
    prompt = lm.tokenizer("abc")["input_ids"]
    tokens = (t.id for t in plain_tokens(CachedLM(lm.model), prompt, DecodingConfig(seed=seed), make_generator(seed)))
    return list(itertools.islice(tokens, count))


def test_same_seed_same_output_different_seed_different_output(char_lm) -> None:
    assert first_tokens(char_lm, 7) == first_tokens(char_lm, 7)
    assert first_tokens(char_lm, 7) != first_tokens(char_lm, 8)
