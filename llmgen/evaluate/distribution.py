"""The exact next-token distribution that a decoding configuration defines, for any context.

    P(x | prompt, generated) = softmax(history.process_rows(logits(prompt + generated), [history], config))

with the row's `History` (its penalty counts, Mirostat's surprises, the tables): the very functions
decoding samples from, so there is no second implementation of the chain. The audit
(`audit.py`) and the distribution tests call `exact_distribution`; `ContextLogits` supplies the
logits of any context through one engine cache (`SequenceCache`), rolling back to the prefix it
shares with the previous context, and remembering the last few.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.history import History, process_rows
from llmgen.decoding.processors import TokenTables, distribution_of
from llmgen.loading.engines.base import SequenceCache


class ContextLogits:
    """Next-token logits [vocab] after a context, from one engine cache."""

    def __init__(self, lm: SequenceCache, remember: int = 256) -> None:
        self.lm = lm
        self.held: list[int] = []  # the tokens the cache holds
        self.memo: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        self.remember = remember

    def __call__(self, context: Sequence[int]) -> Tensor:
        key = tuple(int(t) for t in context)
        if key in self.memo:
            return self.memo[key]
        shared = 0
        for mine, theirs in zip(self.held, key):
            if mine != theirs:
                break
            shared += 1
        shared = min(shared, len(key) - 1)  # at least one token goes through the forward: its logits are the answer
        self.lm.rollback(shared)
        logits = self.lm.forward(list(key[shared:]))[-1].float()  # [vocab]
        self.held = list(key)
        self.memo[key] = logits
        if len(self.memo) > self.remember:
            self.memo.popitem(last=False)
        return logits


@torch.inference_mode()
def exact_distribution(logits_of: ContextLogits, prompt_ids: Sequence[int], generated: Sequence[int],
                       config: DecodingConfig, tables: TokenTables | None = None) -> Tensor:
    """The distribution the next token is drawn from after prompt + generated: [vocab], float64.

    Greedy is the one-hot of the argmax (after the penalties). A constraint's mask is not applied here.
    The stages that read the context (token controls and DRY need `tables`; Mirostat the surprises of
    the generated tokens, recomputed here along the prefix) see it as plain decoding does.
    """
    history = History(list(prompt_ids), config, tables)
    for token in generated:  # Mirostat's surprises along the prefix; no chain runs without Mirostat
        history.accept(int(token), _processed(logits_of, history)[0] if history.keeps_surprises else None)
    return distribution_of(_processed(logits_of, history), config)[0].double()


def _processed(logits_of: ContextLogits, history: History) -> Tensor:
    """The chain on the logits after the row's tokens: [1, vocab]."""
    return process_rows(logits_of(history.tokens)[None], [history], history.config)
