"""The speculative loop: propose -> verify -> roll back, as an iterator of `Token`s (id and origin).

One round, with the sequence so far S (prompt + output) and the target's cache holding all of S but
its last token:

1. The proposer drafts γ tokens x_1..x_γ (γ capped by the policy, by what remains of the token budget
   minus one, and by the draft's context), with q [γ, vocab] or None for a one-hot draft.
2. The target reads the last token of S and x_1..x_γ in one forward: logits [γ+1, vocab].
3. p = the processor chain on those logits, where row i's penalty counts (and the context of the
   token controls, DRY and Mirostat) include x_1..x_i.
   With logprobs asked for, the tokens the round emits get theirs from these same rows: the target's
   raw and processed logits at their positions, exactly what plain decoding computes there.
4. `verify` accepts a prefix x_1..x_n and samples one more token t (resampled, or bonus if n = γ);
   greedy, `verify_greedy` gives the same verdict from the argmaxes of p.
5. Both caches roll back to S + x_1..x_n; t becomes the last token of S, which no cache holds yet.

The sequence's `History` (`history.py`) holds S and takes each emitted token (with its surprise
under p, for Mirostat); row i of step 3 reads `history.ahead(x_1..x_i)`.
With a constraint, the sequence's matcher (`constraints.py`) masks q (in the draft proposer) and p
(here) at every draft position: it is advanced along x_1..x_γ to give the masks of rows 1..γ+1, and
rolled back to S after `verify`; the history then advances it along the tokens the round emits. p and q at position i get the
same mask, so the verifier's guarantee carries over to the constrained distribution. A draft token the
grammar forbids (the n-gram draft knows no grammar) ends the draft there: it would be rejected anyway.

A round that proposes nothing (γ = 0 by the policy, or the n-gram draft found no match) is one plain
decoding step: the pick of `plain.py` on row 0, with no verify (the same token and the same random draws).
The loop never stops by itself before `max_tokens`: the consumer (`sequence.run_sequence`) applies the
stop rules and simply stops reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.counts import draft_counts
from llmgen.decoding.history import History
from llmgen.decoding.logprobs import LogprobSpec, token_logprobs
from llmgen.decoding.processors import TokenTables, distribution_of, process_chained
from llmgen.decoding.sampling import pick
from llmgen.decoding.sequence import Token
from llmgen.decoding.speculative.gamma import Expectation, GammaPolicy
from llmgen.decoding.speculative.proposers import Proposer
from llmgen.decoding.speculative.stats import SpeculativeStats
from llmgen.decoding.speculative.verify import Verdict, verify, verify_greedy


class TargetLM(Protocol):
    """What the loop needs of the target: a `SequenceCache` (`loading.engines.base`), or a table in the tests."""

    length: int

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> Tensor: ...

    def rollback(self, length: int) -> None: ...


@dataclass(frozen=True)
class Round:
    """One round, as written by `--trace`."""

    index: int
    proposed: list[int]
    p: list[float]  # p(x) of each proposed token
    q: list[float]  # q(x) of each proposed token
    accepted: int
    token: int  # the token after the accepted ones
    origin: str  # 'resampled', 'bonus', or 'target' when nothing was proposed
    draft_seconds: float
    target_seconds: float
    gamma: int = 0  # what the policy chose (the draft may propose fewer: a short n-gram match)
    expected: Expectation | None = None  # what `--gamma auto` expected of the round

    def as_json(self) -> dict[str, Any]:
        expected = self.expected
        seconds = self.draft_seconds + self.target_seconds
        return {"round": self.index, "proposed": self.proposed, "p": [round(v, 6) for v in self.p],
                "q": [round(v, 6) for v in self.q],
                "accepted": [i < self.accepted for i in range(len(self.proposed))],
                "accepted_count": self.accepted,
                "rejected_token": self.proposed[self.accepted] if self.accepted < len(self.proposed) else None,
                "replacement" if self.origin == "resampled" else self.origin: self.token,
                "draft_seconds": round(self.draft_seconds, 6), "target_seconds": round(self.target_seconds, 6),
                "gamma": self.gamma,
                "expected_tokens": None if expected is None else round(expected.tokens, 4),
                "expected_speedup": None if expected is None else round(expected.speedup, 4),
                "realised_speedup": (None if expected is None or seconds <= 0
                                     else round((self.accepted + 1) * expected.plain_seconds / seconds, 4))}


OnRound = Callable[[Round], None]


def speculative_tokens(target: TargetLM, proposer: Proposer, prompt_ids: Sequence[int], config: DecodingConfig,
                       generator: torch.Generator, policy: GammaPolicy, max_tokens: int,
                       stats: SpeculativeStats | None = None, on_round: OnRound | None = None,
                       logprobs: LogprobSpec | None = None, matcher: Matcher | None = None,
                       tables: TokenTables | None = None) -> Iterator[Token]:
    """Yield up to `max_tokens` tokens with their origin: 'accepted', 'resampled', 'bonus' or 'target';
    with `logprobs`, each carries the target's logprobs of it. `tables`: the tokenizer's tables for the
    token controls and DRY (`processors.tables`)."""
    stats = stats if stats is not None else SpeculativeStats()
    prompt = list(prompt_ids)
    history = History(prompt, config, tables, matcher)
    generated = history.generated  # S = prompt + generated
    if target.length < len(prompt) - 1:  # the cache may hold a prefix already (a chat's earlier turns)
        target.forward(prompt[target.length:-1])  # prefill all but the last prompt token; every round reads one pending token
    proposer.prefill(prompt)
    index = 0
    while len(generated) < max_tokens:
        length = len(prompt) + len(generated)
        gamma = max(0, min(policy.gamma, max_tokens - len(generated) - 1, proposer.room(length)))
        # 1. Draft.
        started = time.perf_counter()
        proposal = proposer.propose(prompt, generated, gamma, generator)
        drafted = time.perf_counter()
        draft, q = proposal.tokens, proposal.q
        allowed = None
        if matcher is not None:  # the masks of rows 0..γ; the matcher is now advanced along the draft
            draft, q, allowed = constrain_draft(matcher, draft, q)
        expected = policy.expect(len(draft))
        # 2. One target forward over the pending token(s) and the draft.
        tail = [*prompt, *generated][target.length:]
        logits = target.forward([*tail, *draft], all_logits=True)[len(tail) - 1:]  # [γ+1, vocab]
        # 3. p from the same chain as q; row i counts the first i draft tokens.
        counts = draft_counts(prompt, generated, draft, config, logits.shape[-1], logits.device)
        contexts = [history.ahead(draft[:i]) for i in range(len(draft) + 1)] if config.needs_context else None
        processed = process_chained(logits, counts, config, allowed, contexts, draft)  # [γ+1, vocab]
        # 4. Accept a prefix, then one more token (nothing proposed: plain decoding's pick).
        if not draft:
            verdict = Verdict([int(pick(processed, config.greedy, [generator])[0])], 0, [], [])
        elif config.greedy:  # p and q one-hot: the same verdict from the argmaxes alone
            verdict = verify_greedy(draft, processed.argmax(dim=-1).tolist())
        else:
            verdict = verify(draft, q, distribution_of(processed, config), generator)  # p: [γ+1, vocab]
        finished = time.perf_counter()
        # 5. Keep only what both caches got right: S plus the accepted draft tokens.
        target.rollback(length + verdict.accepted)
        proposer.rollback(length + verdict.accepted)
        if matcher is not None:  # back to S: the history advances it along the tokens the round emits
            matcher.rollback(len(draft))
        stats.record(len(draft), verdict.accepted, expected, finished - started)
        policy.update(len(draft), verdict.accepted, drafted - started, finished - drafted)
        last_origin = verdict.last_origin if draft else "target"
        if on_round is not None:
            on_round(Round(index, draft, verdict.p_draft, verdict.q_draft, verdict.accepted,
                           verdict.tokens[-1], last_origin, drafted - started, finished - drafted, gamma, expected))
        index += 1
        origins = ["accepted"] * verdict.accepted + [last_origin]
        emitted = len(verdict.tokens)  # rows 0..accepted of the target's logits: one per emitted token
        entries = (None if logprobs is None
                   else token_logprobs(logits[:emitted], processed[:emitted], verdict.tokens, logprobs))
        for i, (token, origin) in enumerate(zip(verdict.tokens, origins)):
            history.accept(token, processed[i])  # its surprise under p, as in plain decoding; the matcher takes it
            stats.tokens += 1
            yield Token(token, origin, None if entries is None else entries[i])


def constrain_draft(matcher: Matcher, draft: list[int], q: Tensor | None
                    ) -> tuple[list[int], Tensor | None, Tensor]:
    """Advance `matcher` along the draft; return the draft cut before its first forbidden token, its q
    rows, and the masks [len(draft) + 1, vocab] of the target's rows (the last one for the bonus)."""
    masks = []
    for i, token in enumerate(draft):
        allowed = matcher.allowed()  # [vocab]
        if not bool(allowed[token]):
            draft, q = draft[:i], None if q is None else q[:i]
            break
        masks.append(allowed)
        matcher.advance(token)
    masks.append(matcher.allowed())
    return draft, q, torch.stack(masks)
