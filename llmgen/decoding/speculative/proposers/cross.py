"""`CrossTokenizerProposer`: a draft model with another vocabulary, whose proposals travel as text.

Text is the common ground (HF's universal assisted decoding, `AssistedCandidateGeneratorDifferentTokenizers`).
One round, with S the target's tokens so far (prompt + output):

1. Target -> draft. The draft's tokens D are the draft tokenizer's reading of text(S) (the target's
   decoding, special tokens left out). The draft's KV cache holds its tokens of the previous round;
   it rolls back to the longest common prefix with D and reads the rest.
2. The draft writes greedily, one token at a time (argmax of its raw logits; its end-of-sequence token
   ends the draft), and its new tokens become new text (decoded after a few tokens of D, so that a
   tokenizer's leading-space rules see the real context; an unfinished UTF-8 character is held back).
3. Draft -> target, at a safe boundary: the last w tokens of S (w = 4, else 3, 2, 1) are decoded and
   read again by the target tokenizer together with the new text. If that reading starts with exactly
   those w tokens, the boundary after them is stable, and the tokens after them are the reading. If no
   window reads back as itself (the tail would merge with the new text: the target wrote "." and the
   draft goes on with "\n", which the tokenizer reads as one ".\n"), the reading is the new text's
   tokens read alone: the target, having written "." as a token, will not write ".\n" next either.
4. A token of the reading is stable when the reading after one more draft token still has it: the
   proposal is the common prefix of the last two readings (all of the last one once the draft has
   ended). This drops a trailing token that could merge with text the draft has not written yet
   (" o" before "n"). Steps 2-4 repeat, one draft token at a time, until the proposal has γ tokens,
   for at most 2γ + 2 draft tokens; an empty proposal makes the round one plain step.

Exactness. The proposal x_1..x_k is returned with q = None: the verifier treats it as one-hot.
For a one-hot q at x, `verify` accepts x with probability min(1, p(x) / 1) = p(x), and otherwise
samples from (p - q)+ normalised, which is p restricted to tokens != x, divided by 1 - p(x). So the
emitted token y has P(y) = p(x)·[y = x] + (1 - p(x))·p(y)·[y != x] / (1 - p(x)) = p(y), for every x.
Hence the output follows p whatever x is, as long as x does not depend on the uniforms the verifier
draws this round; by induction over positions (a later x_i is only tested after x_1..x_{i-1} were
accepted, i.e. with the context the target really has) the whole sequence follows the target.
NOTE: our x depends on the context only (a greedy draft draws no random numbers), so this holds
trivially. A draft that sampled its tokens with its own randomness would stay exact too, provided
its draws are independent of the verifier's (earlier draws of the same stream are); greedy is also
the better one-hot choice: x is accepted with probability p(x), highest at p's mode, which the draft's
own mode is the best guess of.

NOTE: step 1 decodes and re-tokenizes the whole sequence each round (O(length) tokenizer work,
tenths of a millisecond for the lengths here, next to a draft forward of milliseconds); the model
only reads the new tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from llmgen.decoding.speculative.proposers.base import Proposal
from llmgen.errors import PromptError
from llmgen.loading.engines.base import SequenceCache
from llmgen.loading.engines.prefix import common_prefix
from llmgen.loading.tokenizer import Tokenizer

WINDOWS = (4, 3, 2, 1)  # target tokens re-read with the new text, largest first
CONTEXT = 4  # draft tokens decoded before the new ones
REPLACEMENT = "\ufffd"  # what decoding writes for an unfinished UTF-8 character



def new_text(tokenizer: Tokenizer, context: Sequence[int], new: Sequence[int]) -> str:
    """The text `new` adds after `context` (both token ids of `tokenizer`), without a trailing unfinished
    character. Decoded together with `context`, so that leading-space rules see the real context."""
    before = tokenizer.decode(list(context), skip_special_tokens=True)
    both = tokenizer.decode([*context, *new], skip_special_tokens=True)
    text = both[len(before):] if both.startswith(before) else tokenizer.decode(list(new), skip_special_tokens=True)
    return text.rstrip(REPLACEMENT)


def retokenize(tokenizer: Tokenizer, tail: Sequence[int], text: str) -> list[int] | None:
    """The target tokens that `text` adds after the target tokens `tail`, or None when the boundary after
    `tail` is not stable: decode(tail) + text, read again, must start with `tail` itself."""
    tail = list(tail)
    ids = list(tokenizer(tokenizer.decode(tail) + text, add_special_tokens=False)["input_ids"])
    return ids[len(tail):] if ids[:len(tail)] == tail else None


def target_tokens(tokenizer: Tokenizer, sequence: Sequence[int], text: str) -> list[int]:
    """`retokenize` after the largest stable window of `sequence`'s last tokens (`WINDOWS`); if none is
    stable, `text` read alone."""
    for w in WINDOWS:
        if w > len(sequence):
            continue
        new = retokenize(tokenizer, sequence[-w:], text)
        if new is not None:
            return new
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class CrossTokenizerProposer:
    """A draft model with its own vocabulary and KV cache; proposals are one-hot target tokens (q = None).
    See the module docstring for the round and the exactness argument."""

    name = "cross"

    def __init__(self, lm: SequenceCache, draft_tokenizer: Tokenizer, target_tokenizer: Tokenizer,
                 draft_eos: Collection[int], context_length: int) -> None:
        self.lm = lm
        self.draft_tokenizer = draft_tokenizer
        self.target_tokenizer = target_tokenizer
        self.draft_eos = frozenset(draft_eos)
        self.context_length = context_length  # the draft's, in draft tokens
        self.cached: list[int] = []  # the draft tokens the cache holds: len(cached) == lm.length

    def prefill(self, prompt_ids: Sequence[int]) -> None:
        """Read the prompt's text in draft tokens, all but the last (a reused cache holds target tokens of
        a caller's rule, not ours: it starts over)."""
        self.lm.rollback(0)
        self.cached = []
        ids = self._draft_ids(prompt_ids)
        if len(ids) > 1:
            self._sync(ids)

    def room(self, length: int) -> int:
        return max(0, self.context_length - length)

    def rollback(self, length: int) -> None:
        """Nothing to do: the next round re-reads the accepted text and keeps the common prefix."""

    def _draft_ids(self, sequence: Sequence[int]) -> list[int]:
        text = self.target_tokenizer.decode(list(sequence), skip_special_tokens=True)
        try:
            return list(self.draft_tokenizer(text, add_special_tokens=True)["input_ids"])
        except PromptError:  # a character the draft's vocabulary cannot spell: no draft
            return []

    def _sync(self, ids: list[int]) -> torch.Tensor:
        """Roll the cache back to its common prefix with `ids` (never all of it) and read the rest;
        the next-token logits [1, vocab]."""
        keep = min(common_prefix(self.cached, ids), len(ids) - 1)
        self.lm.rollback(keep)
        logits = self.lm.forward(ids[keep:])
        self.cached = list(ids)
        return logits

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal:
        sequence = [*prompt_ids, *generated]
        ids = self._draft_ids(sequence) if gamma > 0 else []
        steps = min(2 * gamma + 2, self.context_length - len(ids) - 1)
        if not ids or steps <= 0:
            return Proposal([], None)
        logits = self._sync(ids)  # [1, vocab]
        context = ids[-CONTEXT:]
        drafted: list[int] = []
        reading: list[int] | None = None  # the target's reading of the draft's text one token ago
        while True:
            token = int(torch.argmax(logits[-1]))  # [1, vocab] -> the draft's greedy token
            ended = token in self.draft_eos
            if not ended:
                drafted.append(token)
            text = new_text(self.draft_tokenizer, context, drafted)
            try:
                now = target_tokens(self.target_tokenizer, sequence, text) if text else []
            except PromptError:  # a character the target's vocabulary cannot spell: what came before it
                return Proposal(([] if reading is None else reading[:-1])[:gamma], None)
            stable = now if ended else [] if reading is None else now[:common_prefix(reading, now)]
            reading = now
            if ended or len(stable) >= gamma or len(drafted) >= steps:
                return Proposal(stable[:gamma], None)
            logits = self.lm.forward([token])
            self.cached.append(token)
