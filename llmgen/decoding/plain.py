"""Plain decoding: an engine's forward, the processors, then a pick, one token per step.

The engine (`loading.engines`) keeps the sequence's KV cache; this module never sees a model.
`plain_tokens` is plain decoding as a token source: it yields one `Token` per step (with its logprobs
when asked, `logprobs.py`) and never computes a forward pass that nobody asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.counts import penalty_counts
from llmgen.decoding.logprobs import LogprobSpec, token_logprobs
from llmgen.decoding.processors import Context, TokenTables, process, surprise
from llmgen.decoding.sampling import pick
from llmgen.decoding.sequence import Token
from llmgen.loading.engines.base import SequenceCache


def plain_tokens(lm: SequenceCache, prompt_ids: Sequence[int], config: DecodingConfig, generator: torch.Generator,
                 logprobs: LogprobSpec | None = None, matcher: Matcher | None = None,
                 tables: TokenTables | None = None) -> Iterator[Token]:
    """Plain decoding: one `Token` per step, forever; the caller decides when to stop.

    Each token carries its logprobs when `logprobs` asks (else None). With a constraint, `matcher`
    (owned by this sequence) gives each step's mask and takes each token. `tables`
    (`processors.tables.tables_for`) serve the token controls and DRY; each step's `Context` is the
    sequence as it stands, with Mirostat's surprises of the tokens so far."""
    generated: list[int] = []
    surprises: list[float] = []
    # Prefill what the cache does not hold yet (all of the prompt, unless `chat.py` kept a prefix): [1, vocab]
    logits = lm.forward(list(prompt_ids)[lm.length:])
    vocab = logits.shape[-1]
    while True:
        # derived from the context on every step; no state to roll back: [1, vocab] or None
        counts = penalty_counts([(prompt_ids, generated)], config, vocab, logits.device)
        allowed = None if matcher is None else matcher.allowed()[None]  # [1, vocab] bool
        contexts = [Context(prompt_ids, generated, surprises, tables)] if config.needs_context else None
        processed = process(logits, counts, config, allowed, contexts)  # [1, vocab]
        token = int(pick(processed, config.greedy, [generator])[0])
        if config.mirostat and not config.greedy:
            surprises.append(surprise(processed[0], token))
        entry = token_logprobs(logits, processed, [token], logprobs)[0] if logprobs is not None else None
        if matcher is not None:
            matcher.advance(token)
        generated.append(token)
        yield Token(token, "target", entry)
        logits = lm.forward([token])
