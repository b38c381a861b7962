"""Token controls: the mask stage, first in the chain, before the penalties, as vLLM applies them.

On one row with its history (prompt + generated, a `RowView`), in this order:

1. constraint: tokens the grammar forbids get -inf (`constraints.py` gives the mask).
2. allowed token ids: every other token gets -inf (vLLM's allowed_token_ids).
3. bad words (vLLM's bad_words): for each word w = (w_1..w_m) as token ids, w_m gets -inf when the
   last m-1 generated tokens are w_1..w_{m-1} (a one-token word is always banned). Each word is
   tokenized as written and with a leading space (`tables.build_tables`).
4. min tokens: while fewer than N tokens are generated, the stop ids (end of sequence and
   --stop-token-id) get -inf (vLLM's min_tokens).
5. reasoning budget: inside a thinking span (after the last "<think>" with no "</think>" after it),
   once N tokens are written there, only the next token of "</think>" stays drawable, until the
   tag is complete.
6. logit bias (OpenAI's logit_bias): logit[j] += bias[j].

Each rule reads the context only, so speculative rows (row i counts the first i draft tokens) and
rollbacks need nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import RowView, TokenTables
from llmgen.decoding.processors.truncation import NEG_INF
from llmgen.errors import UsageError


def apply_mask(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """`allowed` is [rows, vocab] (or [vocab]) bool; forbidden tokens get -inf. None = no constraint."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), NEG_INF)


def banned_by_bad_words(generated: Sequence[int], words: Sequence[Sequence[int]]) -> set[int]:
    """The last token of each word whose other tokens end `generated` (vLLM's rule)."""
    banned = set()
    for word in words:
        prefix = len(word) - 1
        if prefix > len(generated):
            continue
        if prefix == 0 or list(generated[-prefix:]) == list(word[:prefix]):
            banned.add(word[-1])
    return banned


def forced_close(tokens: Sequence[int], budget: int, open_tag: Sequence[int], close_tag: Sequence[int]) -> int | None:
    """The token the reasoning budget forces next, or None: inside the last open thinking span, once
    `budget` tokens are written there, the tokens of `close_tag` one by one."""
    if budget < 0 or not open_tag or not close_tag:
        return None
    start = _last(tokens, open_tag)
    if start is None:
        return None
    span = list(tokens[start + len(open_tag):])
    if _last(span, close_tag) is not None:
        return None
    over = len(span) - budget
    if over < 0:
        return None
    # NOTE: the tag may already be partly written (forced at earlier positions): continue it.
    done = next((j for j in range(min(over, len(close_tag) - 1), 0, -1) if span[-j:] == list(close_tag[:j])), 0)
    return close_tag[done]


def _last(tokens: Sequence[int], tag: Sequence[int]) -> int | None:
    n = len(tag)
    for start in range(len(tokens) - n, -1, -1):
        if list(tokens[start:start + n]) == list(tag):
            return start
    return None


def _tables(ctx: RowView) -> TokenTables:
    if ctx.tables is None:
        raise UsageError("the bad words, min tokens and reasoning budget need the tokenizer's tables "
                         "(processors.tables.build_tables)")
    return ctx.tables


def apply_token_controls(logits: Tensor, contexts: Sequence[RowView] | None, config: DecodingConfig) -> Tensor:
    """Steps 2-6 on logits [rows, vocab]; `contexts` has one entry per row."""
    if not config.uses_token_controls:
        return logits
    vocab = logits.shape[-1]
    if config.allowed_token_ids:
        keep = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        keep[list(config.allowed_token_ids)] = True
        logits = logits.masked_fill(~keep, NEG_INF)
    if contexts is not None and (config.bad_words or config.min_tokens or config.reasoning_budget >= 0):
        ban = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        forced: dict[int, int] = {}
        for i, ctx in enumerate(contexts):
            tables = _tables(ctx)
            banned = banned_by_bad_words(ctx.generated, tables.bad_words)
            if len(ctx.generated) < config.min_tokens:
                banned |= set(tables.stop_ids)
            banned = {t for t in banned if t < vocab}
            if banned:
                ban[i, list(banned)] = True
            token = forced_close(ctx.tokens, config.reasoning_budget, tables.think_open, tables.think_close)
            if token is not None:
                forced[i] = token
        logits = logits.masked_fill(ban, NEG_INF)
        for i, token in forced.items():
            # NOTE: the forced token stays drawable even if a rule above banned it: the budget wins.
            value = float(logits[i, token])
            logits[i] = NEG_INF
            logits[i, token] = value if value > NEG_INF else 0.0
    if config.logit_bias:
        ids = torch.tensor([t for t, _ in config.logit_bias], device=logits.device)
        bias = torch.zeros(vocab, dtype=logits.dtype, device=logits.device)
        bias[ids[ids < vocab]] = torch.tensor([b for t, b in config.logit_bias if t < vocab], dtype=logits.dtype,
                                              device=logits.device)
        logits = logits + bias
    return logits
