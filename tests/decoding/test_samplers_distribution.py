"""Speculative sampling keeps the target's distribution exactly with every new stage on.

The setup of `test_speculative_distribution.py`: the tiny char models as target and draft, their
logits tabulated for every reachable context (`TableLM`), the real loop, proposers, verifier and
chain. The exact joint distribution of 3 tokens is enumerated with the chain itself, carrying each
prefix's Mirostat surprises (mu is a function of them) and XTC's mixture; a chi-square test compares.
Draft positions count as context for every context-dependent stage (token controls, DRY, Mirostat).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tables import LENGTH, VOCAB, TableLM, chi_square_p_value, prompt_tables

from llmgen.decoding.config import LLAMACPP_ORDER, DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.processors import Context, distribution_of, penalty_context, process, surprise, token_counts
from llmgen.decoding.processors.tables import build_tables
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, NgramProposer, loop, speculative_tokens
from llmgen.decoding.speculative.proposers import model as proposers
from llmgen.loading import models

SAMPLES = 10_000
STAGES = {  # each new stage on its own, and all of them together
    "token-controls": DecodingConfig(logit_bias=((3, 1.5), (5, -2.0)), min_tokens=2, bad_words=("ab",),
                                     allowed_token_ids=tuple(range(1, 12)), max_new_tokens=LENGTH),
    "dry": DecodingConfig(dry_multiplier=0.5, dry_base=1.5, dry_allowed_length=1, max_new_tokens=LENGTH),
    "typical-epsilon-eta-top-n-sigma-dynatemp": DecodingConfig(
        typical_p=0.8, epsilon_cutoff=0.02, eta_cutoff=0.02, top_n_sigma=1.5, temperature=1.2, dynatemp_range=0.6,
        max_new_tokens=LENGTH),
    "xtc": DecodingConfig(xtc_probability=0.5, xtc_threshold=0.1, max_new_tokens=LENGTH),
    "mirostat": DecodingConfig(mirostat=2, mirostat_tau=2.0, mirostat_eta=0.5, max_new_tokens=LENGTH),
    "all": DecodingConfig(logit_bias=((3, 1.0),), min_tokens=1, bad_words=("ab",), dry_multiplier=0.3,
                          dry_allowed_length=1, typical_p=0.95, epsilon_cutoff=0.01, eta_cutoff=0.01,
                          top_n_sigma=2.0, temperature=0.9, dynatemp_range=0.3, top_k=8, top_p=0.95, min_p=0.02,
                          presence_penalty=0.5, xtc_probability=0.4, xtc_threshold=0.15, mirostat=2,
                          mirostat_tau=2.5, mirostat_eta=0.3, max_new_tokens=LENGTH),
}
STAGES["all-llama.cpp-order"] = STAGES["all"].replace(samplers=LLAMACPP_ORDER, epsilon_cutoff=0.0, eta_cutoff=0.0)
PROMPTS = {"model": "h ab", "ngram": "habhdahab"}


def _key(value):
    if isinstance(value, torch.Tensor):
        return value.shape, value.numpy().tobytes()
    if isinstance(value, Context):
        return tuple(value.prompt), tuple(value.generated), tuple(value.surprises)
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    return value


def memoized(fn):
    """The chain is a pure function of (logits, counts, config, mask, contexts): the same call gives the
    same tensor, so 10^4 samples reuse the few hundred distinct calls (and purity is tested too)."""
    seen: dict = {}

    def call(*args):
        key = _key(args)
        if key not in seen:
            seen[key] = fn(*args)
        return seen[key]

    return call


@pytest.fixture
def fast_chain(monkeypatch):
    monkeypatch.setattr(loop, "process_chained", memoized(loop.process_chained))
    monkeypatch.setattr(proposers, "process", memoized(proposers.process))


@pytest.fixture(scope="module")
def setup(char_model: Path, draft_model: Path) -> dict:
    loaded = models.load(str(char_model))
    return {"tokenizer": loaded.tokenizer, "eos": loaded.eos_token_ids,
            **prompt_tables(char_model, draft_model, PROMPTS)}


def exact_joint(table: dict, prompt: list[int], config: DecodingConfig, tables) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) of plain sampling, by enumeration; each prefix carries its surprises."""
    joint: dict[tuple, float] = {((), ()): 1.0}
    for _ in range(LENGTH):
        following: Counter = Counter()
        for (prefix, surprises), mass in joint.items():
            counts = None
            if config.uses_penalties:
                counts = token_counts(penalty_context(prompt, prefix, config), VOCAB)[None]
            processed = process(table[(*prompt, *prefix)][None], counts, config, None,
                                [Context(prompt, prefix, surprises, tables)])
            probs = distribution_of(processed, config)[0].double()
            for token in torch.nonzero(probs).flatten().tolist():
                s = surprise(processed[0], token) if config.mirostat else 0.0
                following[((*prefix, token), (*surprises, s))] += mass * float(probs[token])
        joint = dict(following)
    out: Counter = Counter()
    for (prefix, _), mass in joint.items():
        out[prefix] += mass
    return dict(out)


@pytest.mark.parametrize("name", list(STAGES))
def test_speculative_samples_follow_the_target_distribution(setup, fast_chain, name: str) -> None:
    """Half the samples with the model draft, half with the n-gram draft (the prompts differ, so each
    half has its own exact distribution); one chi-square test over both halves' cells."""
    config = STAGES[name]
    tables = build_tables(config, setup["tokenizer"], setup["eos"], VOCAB)
    generator = make_generator(4321)
    observed: Counter = Counter()
    expected: dict = {}
    for kind in ("model", "ngram"):
        data = setup[kind]
        prompt, target_table = data["prompt"], data["target"]
        expected.update({(kind, k): v / 2 for k, v in exact_joint(target_table, prompt, config, tables).items()})
        proposed = accepted = 0
        for _ in range(SAMPLES // 2):
            if kind == "model":
                proposer = DraftModelProposer(TableLM(data["draft"]), config, 64, tables=tables)
            else:
                proposer = NgramProposer(ngram_max=2, ngram_min=1)
            rounds: list = []
            tokens = speculative_tokens(TableLM(target_table), proposer, prompt, config, generator, FixedGamma(2),
                                        LENGTH, on_round=rounds.append, tables=tables)
            observed[kind, tuple(token.id for token in tokens)] += 1
            proposed += sum(len(r.proposed) for r in rounds)
            accepted += sum(r.accepted for r in rounds)
        assert 0.02 < accepted / max(proposed, 1) < 0.95, (kind, accepted, proposed)  # the verifier really works
    assert chi_square_p_value(observed, expected, SAMPLES) > 1e-3


@pytest.mark.parametrize("name", ["token-controls", "dry", "all"])
def test_greedy_speculative_equals_greedy_plain(setup, name: str) -> None:
    config = STAGES[name].replace(temperature=0.0, max_new_tokens=LENGTH)
    tables = build_tables(config, setup["tokenizer"], setup["eos"], VOCAB)
    for kind in ("model", "ngram"):
        data = setup[kind]
        plain = (t.id for t in plain_tokens(TableLM(data["target"]), data["prompt"], config, make_generator(0),
                                         tables=tables))
        expected = [next(plain) for _ in range(LENGTH)]
        proposer = (DraftModelProposer(TableLM(data["draft"]), config, 64, tables=tables) if kind == "model"
                    else NgramProposer(ngram_max=2, ngram_min=1))
        tokens = speculative_tokens(TableLM(data["target"]), proposer, data["prompt"], config, make_generator(0),
                                    FixedGamma(2), LENGTH, tables=tables)
        assert [t.id for t in tokens] == expected, kind


def test_the_stages_change_the_distribution(setup) -> None:
    """Sanity check: each case differs from plain sampling, so the tests above test something."""
    data = setup["model"]
    base = exact_joint(data["target"], data["prompt"], DecodingConfig(max_new_tokens=LENGTH), None)
    for name, config in STAGES.items():
        tables = build_tables(config, setup["tokenizer"], setup["eos"], VOCAB)
        joint = exact_joint(data["target"], data["prompt"], config, tables)
        assert sum(abs(joint.get(k, 0) - base.get(k, 0)) for k in set(joint) | set(base)) > 0.02, name
