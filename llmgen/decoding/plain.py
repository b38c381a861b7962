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
from llmgen.decoding.history import History, process_rows
from llmgen.decoding.logprobs import LogprobSpec, token_logprobs
from llmgen.decoding.processors import TokenTables
from llmgen.decoding.sampling import pick
from llmgen.decoding.sequence import Token
from llmgen.loading.engines.base import SequenceCache


def plain_tokens(lm: SequenceCache, prompt_ids: Sequence[int], config: DecodingConfig, generator: torch.Generator,
                 logprobs: LogprobSpec | None = None, matcher: Matcher | None = None,
                 tables: TokenTables | None = None) -> Iterator[Token]:
    """Plain decoding: one `Token` per step, forever; the caller decides when to stop.

    Each token carries its logprobs when `logprobs` asks (else None). With a constraint, `matcher`
    (owned by this sequence) gives each step's mask and takes each token. `tables`
    (`processors.tables.tables_for`) serve the token controls and DRY. The row's `History` gives each
    step's counts, mask and context, and takes each token."""
    history = History(prompt_ids, config, tables, matcher)
    # Prefill what the cache does not hold yet (all of the prompt, unless `chat.py` kept a prefix): [1, vocab]
    logits = lm.forward(list(prompt_ids)[lm.length:])
    while True:
        processed = process_rows(logits, [history], config)  # [1, vocab]
        token = int(pick(processed, config.greedy, [generator])[0])
        entry = token_logprobs(logits, processed, [token], logprobs)[0] if logprobs is not None else None
        history.accept(token, processed[0])
        yield Token(token, "target", entry)
        logits = lm.forward([token])
