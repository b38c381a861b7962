"""Speculative sampling keeps the target's distribution exactly, under every sampling option.

The target and the draft are the tiny char models (different weights, same 13-token vocabulary), so
rejections really happen. To keep 10^4 samples fast, their logits are computed once, for every context
the runs can reach (prompt + up to 2 generated tokens), and served by `TableLM`, which behaves like
`CachedLM`. Everything else is the real loop: proposers, penalty counts at draft positions, the
processor chain, `verify`, rollbacks. The joint distribution of 3 generated tokens is compared with
the target's exact one, enumerated with the processor chain, by a chi-square test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tables import CONFIGS, LENGTH, SAMPLES, TableLM, chi_square_p_value, exact_joint, prompt_tables

from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, NgramProposer, speculative_tokens

# The n-gram prompt repeats what the target likes to write after "hab", so that about a third of the
# proposals are accepted.
PROMPTS = {"model": "h ab", "ngram": "habhdahab"}


@pytest.fixture(scope="module")
def tables(char_model: Path, draft_model: Path) -> dict[str, dict]:
    return prompt_tables(char_model, draft_model, PROMPTS)


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
