"""`NgramProposer`: prompt lookup, no model. The last n tokens are searched for earlier in the context,
longest n first (ngram_max down to ngram_min); the tokens that followed the most recent earlier occurrence
are proposed. Such a draft is one-hot, q(x) = 1, so it returns q = None.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from llmgen.decoding.speculative.proposers.base import Proposal
from llmgen.errors import UsageError


def prompt_lookup(tokens: Sequence[int], gamma: int, ngram_max: int, ngram_min: int) -> list[int]:
    """Up to γ tokens that followed the most recent earlier occurrence of the last n tokens.

    n goes from ngram_max down to ngram_min; the first n with a match wins. [] when nothing matches.
    """
    tokens = list(tokens)
    if gamma <= 0:
        return []
    for n in range(min(ngram_max, len(tokens) - 1), ngram_min - 1, -1):
        pattern = tokens[-n:]
        last = pattern[-1]
        # Scan backwards; an occurrence must end before the last token, so that something follows it.
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start + n - 1] == last and tokens[start:start + n] == pattern:
                return tokens[start + n:start + n + gamma]
    return []


class NgramProposer:
    """Prompt lookup over prompt + output so far. One-hot, so q = None."""

    name = "ngram"

    def __init__(self, ngram_max: int, ngram_min: int) -> None:
        if ngram_min < 1 or ngram_max < ngram_min:
            raise UsageError(f"--ngram-min and --ngram-max need 1 <= min <= max, got {ngram_min} and {ngram_max}")
        self.ngram_max = ngram_max
        self.ngram_min = ngram_min

    def prefill(self, prompt_ids: Sequence[int]) -> None:
        pass  # nothing to read

    def room(self, length: int) -> int:
        return sys.maxsize  # no model, no context limit of its own

    def rollback(self, length: int) -> None:
        pass  # nothing cached

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal:
        return Proposal(prompt_lookup([*prompt_ids, *generated], gamma, self.ngram_max, self.ngram_min), None)
