"""What a proposer is: where the γ draft tokens of a round come from.

A proposer reads the prompt once (`prefill`), is told after every round how much of the sequence is still
valid (`rollback`), and is never asked for more tokens than its context has room for (`room`). A proposal
is γ tokens and the distributions q they were drawn from, or q = None for a deterministic (one-hot) draft.
`ForcedFirst` wraps any proposer with a grammar's forced tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Proposal:
    tokens: list[int]  # 0..γ draft tokens
    q: Tensor | None  # [len(tokens), vocab], the draft's distributions; None for a one-hot draft


class Proposer(Protocol):
    name: str

    def prefill(self, prompt_ids: Sequence[int]) -> None: ...

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal: ...

    def rollback(self, length: int) -> None: ...

    def room(self, length: int) -> int: ...


class ForcedFirst:
    """With a constraint: when the grammar forces the next tokens (`GrammarMatcher.forced`), propose
    them, one-hot (q = None), else ask `inner`. The choice depends on the context only, so the verifier
    stays exact; the forced tokens are usually, not always, accepted (the target may spell the same
    bytes with other tokens, which the mask also allows)."""

    def __init__(self, inner: Proposer, matcher: Any) -> None:
        self.inner = inner
        self.matcher = matcher
        self.name = inner.name

    def prefill(self, prompt_ids: Sequence[int]) -> None:
        self.inner.prefill(prompt_ids)

    def room(self, length: int) -> int:
        return self.inner.room(length)

    def rollback(self, length: int) -> None:
        self.inner.rollback(length)

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal:
        forced = self.matcher.forced()[:gamma] if gamma > 0 else []
        if forced:
            return Proposal(forced, None)
        return self.inner.propose(prompt_ids, generated, gamma, generator)
