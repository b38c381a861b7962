"""Speculative sampling keeps the target's distribution exactly, under every sampling option.

The target and the draft are the tiny char models (different weights, same 13-token vocabulary), so
rejections really happen. To keep 10^4 samples fast, their logits are computed once, for every context
the runs can reach (prompt + up to 2 generated tokens), and served by `TableLM`, which behaves like
`CachedLM`. Everything else is the real loop: proposers, penalty counts at draft positions, the
processor chain, `verify`, rollbacks. The joint distribution of 3 generated tokens is compared with
the target's exact one, enumerated with the processor chain, by a chi-square test.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from scipy import stats as scipy_stats

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import distribution, penalty_context, token_counts
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, NgramProposer, speculative_tokens
from llmgen.loading import models

LENGTH = 3  # generated tokens per sample
SAMPLES = 10_000
VOCAB = 13


class TableLM:
    """A stand-in for CachedLM that looks the logits of each context up in a table."""

    def __init__(self, table: dict[tuple[int, ...], torch.Tensor]) -> None:
        self.table = table
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        start = len(self.tokens)
        self.tokens.extend(token_ids)
        rows = [self.table[tuple(self.tokens[:end])] for end in range(start + 1, len(self.tokens) + 1)]
        return torch.stack(rows if all_logits else rows[-1:])  # [k or 1, vocab]

    def rollback(self, length: int) -> None:
        del self.tokens[length:]


def logits_table(path: Path, prompt: list[int], depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Next-token logits after every prefix of the prompt, and after prompt + s for every s of length
    0..depth (one batch per length)."""
    model = models.load(str(path)).model
    table = {}
    with torch.inference_mode():
        prefill = model(input_ids=torch.tensor([prompt])).logits[0].float()  # [len(prompt), vocab]
        table.update({tuple(prompt[:end + 1]): prefill[end] for end in range(len(prompt))})
        for n in range(depth + 1):
            suffixes = list(itertools.product(range(VOCAB), repeat=n))
            batch = torch.tensor([[*prompt, *s] for s in suffixes])
            logits = model(input_ids=batch).logits[:, -1].float()  # [VOCAB^n, vocab]
            table.update({tuple(row): logits[i] for i, row in enumerate(batch.tolist())})
    return table


def exact_joint(table: dict, prompt: list[int], config: DecodingConfig) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) of plain sampling from the target, by enumeration."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        following = {}
        for prefix, mass in joint.items():
            counts = token_counts(penalty_context(prompt, prefix, config), VOCAB)[None]
            probs = distribution(table[(*prompt, *prefix)][None], counts, config)[0].double()
            for token in torch.nonzero(probs).flatten().tolist():
                following[(*prefix, token)] = mass * float(probs[token])
        joint = following
    return joint


def chi_square_p_value(observed: Counter, expected: dict[tuple[int, ...], float], total: int) -> float:
    assert set(observed) <= set(expected), f"impossible outcomes sampled: {set(observed) - set(expected)}"
    cells = sorted(expected, key=lambda k: -expected[k])
    obs, exp, rest_obs, rest_exp = [], [], 0, 0.0
    for cell in cells:  # NOTE: cells expected fewer than 5 times are pooled, as the test requires
        if expected[cell] * total >= 5:
            obs.append(observed[cell])
            exp.append(expected[cell] * total)
        else:
            rest_obs += observed[cell]
            rest_exp += expected[cell] * total
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    exp_sum = sum(exp)
    exp = [e * total / exp_sum for e in exp]  # absorb float rounding
    return float(scipy_stats.chisquare(obs, exp).pvalue)


CONFIGS = {
    "temperature-topk-topp-penalties": DecodingConfig(
        temperature=0.8, top_k=6, top_p=0.9, presence_penalty=0.8, frequency_penalty=0.6, max_new_tokens=LENGTH),
    "minp-repetition-scope-all-window": DecodingConfig(
        temperature=1.3, min_p=0.05, repetition_penalty=1.5, presence_penalty=-0.5, penalty_scope="all",
        penalty_window=3, max_new_tokens=LENGTH),
}
# The n-gram prompt repeats what the target likes to write after "hab", so that about a third of the
# proposals are accepted.
PROMPTS = {"model": "h ab", "ngram": "habhdahab"}


@pytest.fixture(scope="module")
def tables(char_model: Path, draft_model: Path) -> dict[str, dict]:
    out = {}
    for kind, text in PROMPTS.items():
        prompt = models.load(str(char_model)).tokenizer(text)["input_ids"]
        out[kind] = {"prompt": prompt, "target": logits_table(char_model, prompt, LENGTH - 1)}
        if kind == "model":
            out[kind]["draft"] = logits_table(draft_model, prompt, LENGTH - 1)
    return out


@pytest.mark.parametrize("kind,config_name", [
    ("model", "temperature-topk-topp-penalties"),
    ("ngram", "temperature-topk-topp-penalties"),
    ("model", "minp-repetition-scope-all-window"),
])
def test_speculative_samples_follow_the_target_distribution(tables, kind: str, config_name: str) -> None:
    config = CONFIGS[config_name]
    data = tables[kind]
    prompt, target_table = data["prompt"], data["target"]
    generator = make_generator(1234)
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        if kind == "model":
            proposer = DraftModelProposer(TableLM(data["draft"]), config, context_length=64)
        else:
            proposer = NgramProposer(ngram_max=2, ngram_min=1)
        rounds = []
        tokens = speculative_tokens(TableLM(target_table), proposer, prompt, config, generator, FixedGamma(2),
                                    LENGTH, on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    # Both outcomes must be common, or the test would not exercise the verifier.
    assert 0.1 < accepted / proposed < 0.9, (accepted, proposed)
    p_value = chi_square_p_value(observed, exact_joint(target_table, prompt, config), SAMPLES)
    assert p_value > 1e-3, p_value


def test_the_chi_square_test_detects_a_wrong_distribution(tables) -> None:
    """Sanity check of the test itself: samples from the *draft* fail against the target."""
    config = CONFIGS["temperature-topk-topp-penalties"]
    data = tables["model"]
    prompt = data["prompt"]
    target_joint = exact_joint(data["target"], prompt, config)
    draft_joint = exact_joint(data["draft"], prompt, config)
    cells = list(draft_joint)
    generator = make_generator(5)
    picks = torch.multinomial(torch.tensor([draft_joint[c] for c in cells]), SAMPLES, replacement=True,
                              generator=generator)
    observed = Counter(cells[i] for i in picks.tolist())
    if not set(observed) <= set(target_joint):
        return  # the draft samples outcomes the target cannot produce: detected already
    assert chi_square_p_value(observed, target_joint, SAMPLES) < 1e-6
