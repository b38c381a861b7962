"""One way to run one generation: a loaded model, a prompt's ids and the settings in; a token stream
or a finished result out (simonw/llm's `model.prompt()`).

    stream(model, prompt_ids, config, generator)   -> Stream: the `Token`s, and its statistics once done
    generate(model, prompt_ids, config)            -> SequenceResult (the stop rules of `sequence.py`)

Plain decoding, or speculative decoding with a `Speculation` (a draft model, or the n-gram draft).
Each call builds what one sequence owns: its constraint matcher, the tokenizer's tables (token
controls, DRY), its caches (fresh, or those a chat keeps: `lm`, `draft_lm`) and its random stream.
Rows decoded together (`-n N`, `--input`, serve's batch) go through `batch.decode_rows`; beam search
through `beam.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmgen.decoding import constraints
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.processors.tables import tables_for
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import OnText, SequenceResult, Token, TokenSource, run_sequence
from llmgen.decoding.speculative.loop import OnRound
from llmgen.decoding.speculative.proposers.suffix import SuffixStore
from llmgen.decoding.speculative.runner import Gamma, make_source
from llmgen.loading.engines.base import SequenceCache
from llmgen.loading.models import LoadedModel


@dataclass(frozen=True)
class Speculation:
    """How a sequence is drafted: a draft model (None: the n-gram draft), γ and the n-gram bounds.

    `suffix`: with no draft model, the suffix draft over this store instead of the n-gram draft. Pass
    the same `SuffixStore` to every sequence of a process (serve's rows, a chat's turns, `-n`) and
    each drafts from the others' prompts and outputs too.
    """

    draft: LoadedModel | None = None
    gamma: Gamma = "auto"
    ngram_max: int = 4
    ngram_min: int = 2
    suffix: SuffixStore | None = None


@dataclass
class Stream:
    """One sequence's tokens, and the statistics it adds to its result once read (speculative counts)."""

    tokens: TokenSource
    stats: Callable[[], dict[str, Any]] = field(default=dict)

    def __iter__(self) -> Iterator[Token]:
        return self.tokens


def stream(model: LoadedModel, prompt_ids: Sequence[int], config: DecodingConfig,
           generator: torch.Generator | None = None, *, speculation: Speculation | None = None,
           logprobs: LogprobSpec | None = None, matcher: Matcher | None = None, on_round: OnRound | None = None,
           lm: SequenceCache | None = None, draft_lm: SequenceCache | None = None,
           check_draft: bool = True) -> Stream:
    """The tokens of one sequence, forever (plain) or up to the token budget (speculative); the caller
    stops reading (`generate` applies the stop rules).

    `generator`: the sequence's random stream (default: from `config.seed`). `matcher`: the sequence's
    constraint state, when the caller keeps it (serve hands a row from here to the batch); by default
    a fresh one when the settings constrain. `lm`, `draft_lm`: caches to reuse, each holding a prefix
    of `prompt_ids` (a chat's earlier turns); by default fresh ones. `check_draft=False` skips the
    vocabulary check of a draft already checked against this model (serve checks it once).
    """
    generator = generator if generator is not None else make_generator(config.seed, model.device)
    matcher = matcher if matcher is not None else constraints.new_matcher(config, model)
    tables = tables_for(config, model.tokenizer, model.eos_token_ids)
    if speculation is None:
        return Stream(plain_tokens(lm or model.engine.sequence(), prompt_ids, config, generator, logprobs, matcher,
                                   tables))
    tokens, stats = make_source(model, speculation.draft, prompt_ids, config, generator, gamma=speculation.gamma,
                                ngram_max=speculation.ngram_max, ngram_min=speculation.ngram_min, on_round=on_round,
                                logprobs=logprobs, target_lm=lm, draft_lm=draft_lm, matcher=matcher, tables=tables,
                                check_draft=check_draft, suffix=speculation.suffix)
    return Stream(tokens, stats)


def generate(model: LoadedModel, prompt_ids: Sequence[int], config: DecodingConfig, *,
             speculation: Speculation | None = None, generator: torch.Generator | None = None,
             logprobs: LogprobSpec | None = None, on_text: OnText | None = None, on_round: OnRound | None = None,
             lm: SequenceCache | None = None, draft_lm: SequenceCache | None = None,
             context_length: int | None = None) -> SequenceResult:
    """One whole sequence: `stream`, read until a stop rule fires; `result.stats` holds the timings
    (and, speculative, the acceptance counts). `on_text(piece, origin, logprob)` gets the text as it
    is decided. `context_length`: the positions the sequence may use (default: the model's)."""
    tokens = stream(model, prompt_ids, config, generator, speculation=speculation, logprobs=logprobs,
                    on_round=on_round, lm=lm, draft_lm=draft_lm)
    result = run_sequence(tokens.tokens, model.tokenizer, prompt_ids, config, model.eos_token_ids,
                          context_length or model.context_length, on_text)
    result.stats.update(tokens.stats())
    return result
