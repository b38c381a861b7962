"""DRY, "don't repeat yourself" (p-e-w; llama.cpp's `llama_sampler_dry`, from koboldcpp).

Over the window w = the last N tokens of the context (prompt + generated; N = -1: all of it):

1. A sequence breaker (`tables.dry_breakers`) limits how far back a repetition may reach: scanning
   from the end, the first breaker that ends at distance i (its head i tokens from the end, its tail
   after it) sets the limit L = i - (tail length). No breaker: L = len(w).
2. For each earlier position k, m_k = the length of the longest suffix of w[:k+1] that is also a
   suffix of w, capped at L (a Z-array on the reversed window).
3. The token that followed, w[k+1], would extend that repetition: its length is the largest m_k over
   its occurrences, counted only when m_k >= the allowed length A.
4. logit[t] -= M * base ** (length(t) - A), unless t is a breaker by itself. The exponent is capped
   so that base ** exponent stays a float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import RowView, Step, need_rows
from llmgen.errors import UsageError

FLOAT_MAX_LOG = 88.7228391  # log(float32 max), as llama.cpp caps the exponent


def z_array(s: Sequence[int]) -> list[int]:
    """z[k] = the length of the longest common prefix of s and s[k:] (z[0] = 0)."""
    n = len(s)
    z = [0] * n
    left = right = 0
    for k in range(1, n):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < n and s[z[k]] == s[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return z


def repeat_limit(window: Sequence[int], breakers: dict[int, tuple[tuple[int, ...], ...]]) -> int:
    """Step 1: how many tokens back a repetition may reach."""
    n = len(window)
    for i in range(n):  # i = distance of the head from the end
        tails = breakers.get(window[n - 1 - i])
        if tails is None:
            continue
        longest = -1
        for tail in tails:
            if longest < len(tail) <= i and list(window[n - i:n - i + len(tail)]) == list(tail):
                longest = len(tail)
        if longest >= 0:
            return i - longest
    return n


def dry_penalties(tokens: Sequence[int], config: DecodingConfig,
                  breakers: dict[int, tuple[tuple[int, ...], ...]]) -> dict[int, float]:
    """token -> the amount DRY subtracts from its logit, for the next token after `tokens`."""
    last_n = config.dry_penalty_last_n
    if config.dry_multiplier == 0 or last_n == 0:
        return {}
    window = list(tokens) if last_n < 0 else list(tokens)[-last_n:]
    n, allowed = len(window), config.dry_allowed_length
    if n <= allowed:
        return {}
    limit = repeat_limit(window, breakers)
    if limit < allowed:
        return {}
    z = z_array(window[::-1])
    lengths: dict[int, int] = {}
    for k in range(1, n):  # the suffix ending k tokens before the end repeats the end for z[k] tokens
        length = min(z[k], limit)
        if length >= allowed:
            token = window[n - k]  # the token that followed it
            lengths[token] = max(lengths.get(token, 0), length)
    cap = int(FLOAT_MAX_LOG / math.log(config.dry_base)) if config.dry_base > 1.000001 else 0
    out = {}
    for token, length in lengths.items():
        if () in breakers.get(token, ()):
            continue  # a breaker alone is never penalised
        exponent = length - allowed
        if cap > 0:
            exponent = min(exponent, cap)
        out[token] = config.dry_multiplier * config.dry_base ** exponent
    return out


def apply_dry(logits: Tensor, tokens_per_row: Sequence[Sequence[int]], config: DecodingConfig,
              breakers: Sequence[dict[int, tuple[tuple[int, ...], ...]]]) -> Tensor:
    """logits [rows, vocab]; row r's context tokens and breakers."""
    out = logits
    for r, tokens in enumerate(tokens_per_row):
        penalties = dry_penalties(tokens, config, breakers[r])
        penalties = {t: v for t, v in penalties.items() if t < logits.shape[-1]}
        if penalties:
            if out is logits:
                out = logits.clone()
            ids = list(penalties)
            out[r, ids] -= logits.new_tensor([penalties[t] for t in ids])
    return out


def stage(config: DecodingConfig) -> Step:
    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        rows = need_rows(rows, "dry")
        if any(r.tables is None for r in rows) and config.dry_sequence_breakers:
            raise UsageError("DRY's sequence breakers need the tokenizer's tables (processors.tables.build_tables)")
        return apply_dry(logits, [r.tokens for r in rows], config, [r.tables.dry_breakers if r.tables else {} for r in rows])

    return step
