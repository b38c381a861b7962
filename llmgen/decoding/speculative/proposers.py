"""Proposers: where the γ draft tokens of a round come from.

- `DraftModelProposer`: a smaller model with its own KV cache samples γ tokens one at a time, each
  from q_i = the same processor chain as the target's (penalties counting the earlier draft tokens,
  temperature, top-k, top-p, min-p), and returns those q_i: the verifier needs the distribution the
  draft really sampled from.
  With a constraint, each q_i is masked by the sequence's matcher (advanced along the draft tokens,
  then rolled back: the proposer leaves it as it found it).
- `NgramProposer`: prompt lookup, no model. The last n tokens are searched for earlier in the context,
  longest n first (ngram_max down to ngram_min); the tokens that followed the most recent earlier
  occurrence are proposed. Such a draft is one-hot, q(x) = 1, so it returns q = None.

A proposer reads the prompt once (`prefill`), is told after every round how much of the sequence is still valid (`rollback`), and
is never asked for more tokens than its context has room for (`room`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.counts import penalty_counts
from llmgen.decoding.history import History
from llmgen.decoding.processors import TokenTables, distribution_of, process
from llmgen.decoding.sampling import pick
from llmgen.errors import UsageError
from llmgen.loading.engines.base import SequenceCache


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


class DraftModelProposer:
    """A draft model with its own KV cache.

    The cache always lags the sequence by at least one token: the draft never runs its last proposed
    token through the model, because that token's logits are only needed if it is accepted. When every
    token was accepted, the next round feeds that last draft token and the bonus token together (the
    draft "catches up").
    """

    name = "model"

    def __init__(self, lm: SequenceCache, config: DecodingConfig, context_length: int,
                 matcher: Matcher | None = None, tables: TokenTables | None = None) -> None:
        self.lm = lm
        self.config = config
        self.context_length = context_length
        self.matcher = matcher  # the sequence's own, shared with the loop
        self.tables = tables
        # NOTE: the draft's own history of the sequence, for the stages that read it: Mirostat's surprises
        # there are those of q. A generated token the draft did not propose (resampled, bonus) counts as
        # surprise tau, leaving q's mu as it was. Any q keeps the verifier exact; this one follows the
        # target's mu closely.
        self.history = History([], config, tables)

    def prefill(self, prompt_ids: Sequence[int]) -> None:
        """Read all but the last prompt token, so that rounds (and their timings) start alike."""
        if self.lm.length < len(prompt_ids) - 1:  # the cache may hold a prefix already (chat)
            self.lm.forward(list(prompt_ids)[self.lm.length:-1])

    def room(self, length: int) -> int:
        return max(0, self.context_length - length)

    def rollback(self, length: int) -> None:
        self.lm.rollback(min(self.lm.length, length))

    def _catch_up(self, prompt_ids: Sequence[int], generated: Sequence[int]) -> History:
        """The draft's history, rolled back to where it agrees with `generated`, then extended by it."""
        if list(self.history.prompt) != list(prompt_ids):
            self.history = History(list(prompt_ids), self.config, self.tables)
        history = self.history
        agree = 0
        for mine, theirs in zip(history.generated, generated):
            if mine != theirs:
                break
            agree += 1
        history.truncate(agree)
        for token in generated[agree:]:
            history.accept(token, surprise_bits=self.config.mirostat_tau)
        return history

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal:
        if gamma <= 0:
            return Proposal([], None)
        sequence = [*prompt_ids, *generated]
        tail = sequence[self.lm.length:]  # the tokens the draft has not read yet (at least one)
        logits = self.lm.forward(tail)  # [1, vocab]
        tokens: list[int] = []
        rows: list[Tensor] = []
        history = self._catch_up(prompt_ids, generated) if self.config.needs_context else None
        for i in range(gamma):
            counts = penalty_counts([(prompt_ids, [*generated, *tokens])], self.config, logits.shape[-1],
                                    logits.device)
            allowed = None if self.matcher is None else self.matcher.allowed()[None]  # [1, vocab]
            contexts = None if history is None else [history.ahead()]
            processed = process(logits, counts, self.config, allowed, contexts)  # [1, vocab]
            q_i = distribution_of(processed, self.config)  # [1, vocab]
            token = int(pick(processed, self.config.greedy, [generator])[0])
            if history is not None:  # with Mirostat, the token's surprise under q
                history.accept(token, surprise_bits=-float(q_i[0, token].double().log2()) if history.keeps_surprises
                               else None)
            tokens.append(token)
            rows.append(q_i[0])
            if self.matcher is not None:
                self.matcher.advance(token)
            if i + 1 < gamma:
                logits = self.lm.forward([token])
        if self.matcher is not None:
            self.matcher.rollback(len(tokens))
        return Proposal(tokens, torch.stack(rows))  # q: [γ, vocab]


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
