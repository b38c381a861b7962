"""Plain decoding: an engine's forward, the processors, then a pick, one token per step.

The engine (`loading.engines`) keeps the sequence's KV cache; this module never sees a model.
`sample_tokens` is plain decoding as an iterator: it yields one token per step and never computes a
forward pass that nobody asked for. `plain_source` is the same loop as a token source, with each
token's logprobs when asked (`logprobs.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob, token_logprobs
from llmgen.decoding.processors import Context, TokenTables, penalty_context, process, surprise, token_counts
from llmgen.decoding.sampling import greedy_pick, random_pick
from llmgen.loading.engines.base import SequenceCache


def pick(logits: Tensor, counts: Tensor | None, config: DecodingConfig, generator: torch.Generator) -> Tensor:
    """Processors then the pick, row by row: logits [rows, vocab] -> tokens [rows]."""
    return pick_processed(process(logits, counts, config), config, generator)


def pick_processed(processed: Tensor, config: DecodingConfig, generator: torch.Generator) -> Tensor:
    """The pick from logits that went through `process` already: [rows, vocab] -> tokens [rows]."""
    if config.greedy:
        return greedy_pick(processed)
    return random_pick(processed.softmax(dim=-1), generator)


def sample_tokens(lm: SequenceCache, prompt_ids: Sequence[int], config: DecodingConfig,
                  generator: torch.Generator, tables: TokenTables | None = None) -> Iterator[int]:
    """Plain decoding: yields generated tokens one at a time, forever; the caller decides when to stop."""
    for token, _ in decode_steps(lm, prompt_ids, config, generator, tables=tables):
        yield token


def plain_source(lm: SequenceCache, prompt_ids: Sequence[int], config: DecodingConfig, generator: torch.Generator,
                 logprobs: LogprobSpec | None = None, matcher: Matcher | None = None,
                 tables: TokenTables | None = None) -> Iterator[tuple[int, str, TokenLogprob | None]]:
    """Plain decoding as a token source (`generation.TokenSource`): (token, "target", its logprobs or None)."""
    return ((token, "target", entry)
            for token, entry in decode_steps(lm, prompt_ids, config, generator, logprobs, matcher, tables))


def decode_steps(lm: SequenceCache, prompt_ids: Sequence[int], config: DecodingConfig, generator: torch.Generator,
                 logprobs: LogprobSpec | None = None, matcher: Matcher | None = None,
                 tables: TokenTables | None = None) -> Iterator[tuple[int, TokenLogprob | None]]:
    """The loop: each step yields the picked token and, when asked, its logprobs (else None).

    With a constraint, `matcher` (owned by this sequence) gives each step's mask and takes each token.
    `tables` (`processors.tables.build_tables`) serve the token controls and DRY; each step's
    `Context` is the sequence as it stands, with Mirostat's surprises of the tokens so far."""
    generated: list[int] = []
    surprises: list[float] = []
    # Prefill what the cache does not hold yet (all of the prompt, unless `chat.py` kept a prefix): [1, vocab]
    logits = lm.forward(list(prompt_ids)[lm.length:])
    vocab = logits.shape[-1]
    while True:
        counts = None
        if config.uses_penalties:  # derived from the context on every step; no state to roll back
            counts = token_counts(penalty_context(prompt_ids, generated, config), vocab, logits.device)[None]
        allowed = None if matcher is None else matcher.allowed()[None]  # [1, vocab] bool
        contexts = [Context(prompt_ids, generated, surprises, tables)] if config.needs_context else None
        processed = process(logits, counts, config, allowed, contexts)  # [1, vocab]
        token = int(pick_processed(processed, config, generator)[0])
        if config.mirostat and not config.greedy:
            surprises.append(surprise(processed[0], token))
        entry = token_logprobs(logits, processed, [token], logprobs)[0] if logprobs is not None else None
        if matcher is not None:
            matcher.advance(token)
        generated.append(token)
        yield token, entry
        logits = lm.forward([token])
