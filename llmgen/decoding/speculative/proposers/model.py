"""`DraftModelProposer`: a smaller model with its own KV cache samples γ tokens one at a time, each from
q_i = the same processor chain as the target's (penalties counting the earlier draft tokens, temperature,
top-k, top-p, min-p), and returns those q_i: the verifier needs the distribution the draft really sampled
from. With a constraint, each q_i is masked by the sequence's matcher (advanced along the draft tokens,
then rolled back: the proposer leaves it as it found it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.counts import penalty_counts
from llmgen.decoding.history import History
from llmgen.decoding.processors import TokenTables, distribution_of, process
from llmgen.decoding.sampling import pick
from llmgen.decoding.speculative.proposers.base import Proposal
from llmgen.loading.engines.base import SequenceCache


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
