"""From loaded models to a speculative token source (`make_source`, one call per sequence: fresh
caches, fresh statistics). `generation.stream` and `generation.generate` are the way in;
`speculate` runs one whole sequence for the tests that call it (generation builds on this module).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher, new_matcher
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.processors import TokenTables
from llmgen.decoding.processors.tables import tables_for
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import OnText, SequenceResult, TokenSource, run_sequence, token_budget
from llmgen.decoding.speculative.gamma import AdaptiveGamma, FixedGamma, GammaPolicy
from llmgen.decoding.speculative.loop import OnRound, speculative_tokens
from llmgen.decoding.speculative.proposers import (
    CrossTokenizerProposer,
    DraftModelProposer,
    ForcedFirst,
    NgramProposer,
    Proposer,
    SuffixProposer,
    SuffixStore,
)
from llmgen.decoding.speculative.stats import SpeculativeStats
from llmgen.errors import UsageError
from llmgen.loading.engines.base import SequenceCache
from llmgen.loading.models import LoadedModel
from llmgen.loading.verify_cost import verify_cost

Gamma = int | Literal["auto"]
NGRAM = "ngram"
SUFFIX = "suffix"


def parse_gamma(value: str | int) -> Gamma:
    """'auto' or an integer >= 1; anything else is a usage error."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
        gamma = int(value)
        if gamma < 1:
            raise UsageError(f"--gamma must be at least 1 (or 'auto'), got {gamma}")
        return gamma
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    raise UsageError(f"--gamma must be a positive integer or 'auto', got {value!r}")


def shares_vocabulary(target: LoadedModel, draft: LoadedModel) -> bool:
    """Whether the draft has the target's token ids and logits width (its q can be verified against p);
    otherwise it drafts across tokenizers (`proposers/cross.py`). Remembered per pair of tokenizers."""
    known = _SHARED.setdefault(target.tokenizer, weakref.WeakKeyDictionary())
    if draft.tokenizer not in known:
        known[draft.tokenizer] = (target.vocab_size == draft.vocab_size
                                  and target.tokenizer.get_vocab() == draft.tokenizer.get_vocab())
    return known[draft.tokenizer]


_SHARED: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, bool]] = weakref.WeakKeyDictionary()


def check_compatible(target: LoadedModel, draft: LoadedModel) -> None:
    """Any draft model can draft: one with the target's vocabulary samples from its own q
    (`DraftModelProposer`), one with another vocabulary proposes text (`CrossTokenizerProposer`).
    Called once by the front-ends, so that the vocabulary comparison happens at load time."""
    shares_vocabulary(target, draft)


def make_policy(gamma: Gamma, target: LoadedModel, draft: LoadedModel | None) -> GammaPolicy:
    """A fixed γ, or `auto` over the target's verify-cost curve (`loading/verify_cost.py`: measured once per
    engine, model and threads, and cached) and, for a model draft, its own curve (what catching up costs)
    and its step over the target's (c's prior)."""
    if gamma != "auto":
        return FixedGamma(gamma)
    cost = verify_cost(target)
    if draft is None:  # n-gram: drafting is nearly free, and there is no draft cache to catch up
        return AdaptiveGamma(start=4, max_gamma=24, draft_cost=0.02, forward_cost=cost.curve,
                             step_seconds=cost.step_seconds)
    draft_cost = verify_cost(draft)
    if cost.step_seconds and draft_cost.step_seconds:
        c = draft_cost.step_seconds / cost.step_seconds
    else:  # NOTE: given curves have no seconds: the same-size model in int4 measured 0.15-0.3 of a float32 step
        c = 0.25 if draft.quant == "int4" else 0.65
    return AdaptiveGamma(start=4, max_gamma=16, draft_cost=c, forward_cost=cost.curve,
                         draft_forward_cost=draft_cost.curve, step_seconds=cost.step_seconds)


def make_proposer(draft: LoadedModel | None, config: DecodingConfig, ngram_max: int, ngram_min: int,
                  draft_lm: SequenceCache | None = None, matcher: Matcher | None = None,
                  tables: TokenTables | None = None, suffix: SuffixStore | None = None,
                  target: LoadedModel | None = None) -> Proposer:
    """Without a draft model, the suffix draft over `suffix` when given, else the n-gram draft; a draft model
    sharing the vocabulary of `target`, or one with another vocabulary (`target` given and
    `shares_vocabulary` false)."""
    if draft is None:
        return NgramProposer(ngram_max, ngram_min) if suffix is None else SuffixProposer(suffix, ngram_min)
    lm = draft_lm or draft.engine.sequence()
    if target is not None and not shares_vocabulary(target, draft):
        return CrossTokenizerProposer(lm, draft.tokenizer, target.tokenizer, draft.eos_token_ids, draft.context_length)
    return DraftModelProposer(lm, config, draft.context_length, matcher, tables)


SourceWithStats = tuple[TokenSource, Callable[[], dict[str, Any]]]


def make_source(target: LoadedModel, draft: LoadedModel | None, prompt_ids: Sequence[int],
                config: DecodingConfig, generator: torch.Generator, *, gamma: Gamma = "auto",
                ngram_max: int = 4, ngram_min: int = 2, on_round: OnRound | None = None,
                logprobs: LogprobSpec | None = None, target_lm: SequenceCache | None = None,
                draft_lm: SequenceCache | None = None, matcher: Matcher | None = None,
                tables: TokenTables | None = None, check_draft: bool = True,
                suffix: SuffixStore | None = None) -> SourceWithStats:
    """A fresh token source for one sequence, and a function returning its statistics when it is done.

    `draft` is a loaded draft model, or None for the n-gram (prompt lookup) draft, or the suffix draft
    when `suffix` (the store the sequence reads and joins, shared across requests) is given. `target_lm` and
    `draft_lm` are caches to reuse (`chat.py`): each may hold a prefix of `prompt_ids` already, and only
    the rest is prefilled; by default both start empty. `matcher` (the sequence's own) and `tables`:
    built here when not given. `check_draft` is kept for the callers' sake: the vocabulary comparison
    that chooses the proposer is remembered per pair of tokenizers, so it is never repeated.
    """
    stats = SpeculativeStats()
    policy = make_policy(gamma, target, draft)
    budget = token_budget(len(prompt_ids), config, target.context_length)
    if matcher is None:  # this sequence's own; the proposer and the loop share it
        matcher = new_matcher(config, target)
    if tables is None:  # the token controls' and DRY's ids
        tables = tables_for(config, target.tokenizer, target.eos_token_ids)
    proposer = make_proposer(draft, config, ngram_max, ngram_min, draft_lm, matcher, tables, suffix, target)
    if matcher is not None:  # the grammar's forced tokens are a free draft (docs/constrained.md: 1.23x on n-gram)
        proposer = ForcedFirst(proposer, matcher)
    source = speculative_tokens(target_lm or target.engine.sequence(), proposer,
                                prompt_ids, config, generator, policy, budget, stats, on_round, logprobs, matcher,
                                tables)
    return source, stats.as_dict


def speculate(target: LoadedModel, draft: LoadedModel | None, prompt_ids: Sequence[int], config: DecodingConfig,
              *, gamma: Gamma = "auto", ngram_max: int = 4, ngram_min: int = 2,
              generator: torch.Generator | None = None, on_text: OnText | None = None,
              on_round: OnRound | None = None, logprobs: LogprobSpec | None = None,
              suffix: SuffixStore | None = None) -> SequenceResult:
    """Generate one sequence with speculative decoding; `result.stats` holds timings and the counts."""
    generator = generator or make_generator(config.seed, target.device)
    source, extra = make_source(target, draft, prompt_ids, config, generator, gamma=gamma,
                                ngram_max=ngram_max, ngram_min=ngram_min, on_round=on_round, logprobs=logprobs,
                                suffix=suffix)
    result = run_sequence(source, target.tokenizer, prompt_ids, config, target.eos_token_ids,
                          target.context_length, on_text)
    result.stats.update(extra())
    return result
