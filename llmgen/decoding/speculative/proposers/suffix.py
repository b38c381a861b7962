"""`SuffixProposer`: suffix decoding (Arctic Inference's idea, our own code): a bounded-depth suffix trie
over the prompt, the output so far and, through a shared `SuffixStore`, earlier requests and their
outputs. One-hot, so q = None and the verifier stays exact.

The store holds token sequences S_1..S_k (a request's prompt + output, a corpus paragraph). Its trie has
a path for every substring of length <= D (`depth`) of every S_j; a node's `count` is how many
(sequence, start) occurrences pass through it, `last` the latest insertion tick among them. So for a
context c and a token t,

    P(t | c) ~= count(c + t) / sum_u count(c + u)

estimated from the occurrences of c (the longest suffix of the current context found in the trie, at
most `match_max` long and at least `match_min`). The proposal walks down from that node, taking each
time the child with the largest count (then the most recent), while the product of those estimates
stays >= `min_prob`; at depth D it re-matches the context extended by the tokens proposed so far, so
proposals are not bounded by D. A sequence drafts from two stores: its own (its prompt and output)
and the shared one (which holds it too); at each (re)match the store with the longer match wins, its
own on a tie, and the shared one needs at least `SHARED_MIN` tokens (a short phrase common to
unrelated requests is noise).

Appending one token to an open sequence costs O(D): the sequence keeps its "active" nodes, those of
its suffixes of length 0..D-1, and each steps down to its child t. The store is bounded: when it holds
more than `budget` tokens, the oldest sequences are removed whole (each occurrence walked once,
counts decremented, empty nodes dropped) until it fits or one sequence is left. An evicted sequence
that was still open is dead: later tokens of its request are not added.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from llmgen.decoding.speculative.proposers.base import Proposal
from llmgen.errors import UsageError

DEPTH = 16  # D: the longest substring the trie indexes
BUDGET = 1 << 15  # tokens held across sequences before the oldest go (at most ~4.3 KB a token: 140 MB)
SHARED_MIN = 4  # the shortest match taken from the shared store (other sequences): short ones are noise there
MIN_PROB = 0.1  # stop proposing when the estimated chance that the whole chain is right falls below this


class _Node:
    __slots__ = ("children", "count", "last")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0
        self.last = 0


@dataclass
class _Entry:
    tokens: list[int]
    active: list[_Node] = field(default_factory=list)  # nodes of the suffixes of length 1..D-1, longest first
    alive: bool = True


class SuffixStore:
    """Sequences of token ids in a bounded-depth suffix trie, shared by the rows and requests of a process
    (serve, chat, `-n`, bench), and saved in a `--draft-cache` file (`lookup_cache.py`).

    Not thread-safe: call it from the thread that decodes.
    """

    def __init__(self, budget: int = BUDGET, depth: int = DEPTH) -> None:
        if budget < 1 or depth < 2:
            raise UsageError(f"suffix store: budget >= 1 and depth >= 2, got {budget} and {depth}")
        self.budget = budget
        self.depth = depth
        self.root = _Node()
        self.entries: dict[int, _Entry] = {}  # insertion order: oldest first
        self.held = 0  # tokens in live entries
        self._next_key = 0
        self._tick = 0

    def open(self) -> int:
        """A new, empty sequence; returns its key."""
        key = self._next_key
        self._next_key += 1
        self.entries[key] = _Entry([])
        return key

    def add(self, tokens: Sequence[int]) -> int:
        """A whole sequence (a corpus paragraph, a finished request); returns its key."""
        key = self.open()
        self.extend(key, tokens)
        return key

    def close(self, key: int) -> None:
        """The sequence will not grow: its active nodes are dropped (it stays until evicted)."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.active = []

    def extend(self, key: int, tokens: Sequence[int]) -> None:
        """Append `tokens` to sequence `key` (ignored once it was evicted), then evict to the budget."""
        entry = self.entries.get(key)
        if entry is None or not entry.alive or not tokens:
            return
        depth, root = self.depth, self.root
        for token in tokens:
            self._tick += 1
            stepped = []
            for node in (*entry.active, root):  # each suffix of length d becomes one of length d + 1
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                child.count += 1
                child.last = self._tick
                stepped.append(child)
            entry.active = stepped[-(depth - 1):] if len(stepped) >= depth else stepped
            entry.tokens.append(token)
        self.held += len(tokens)
        self._evict(keep=key)

    def _evict(self, keep: int) -> None:
        while self.held > self.budget and len(self.entries) > 1:
            oldest = next(iter(self.entries))
            if oldest == keep:  # the sequence being extended goes last
                self.entries[oldest] = self.entries.pop(oldest)
                continue
            self._remove(oldest)

    def _remove(self, key: int) -> None:
        entry = self.entries.pop(key)
        tokens = entry.tokens
        for start in range(len(tokens)):  # each occurrence: decrement its path, drop what empties
            node = self.root
            for token in tokens[start:start + self.depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    break  # its subtree held only this occurrence
                node = child
        self.held -= len(tokens)
        entry.alive = False
        entry.active = []

    def sequences(self) -> list[list[int]]:
        """The live sequences, oldest first (what a cache file saves)."""
        return [entry.tokens for entry in self.entries.values() if entry.alive]

    def nodes(self) -> int:
        """The trie's size, for tests and reports."""
        count, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            count += len(node.children)
            stack.extend(node.children.values())
        return count

    def match(self, context: Sequence[int], match_min: int, match_max: int) -> tuple[int, _Node | None]:
        """The longest suffix of `context` (match_min..match_max tokens) that has a continuation here:
        its length and its node; (0, None) when there is none."""
        for m in range(min(match_max, self.depth - 1, len(context)), match_min - 1, -1):
            node: _Node | None = self.root
            for token in context[len(context) - m:]:
                node = node.children.get(token) if node is not None else None
                if node is None:
                    break
            if node is not None and node.children:
                return m, node
        return 0, None

    def propose(self, context: Sequence[int], gamma: int, match_min: int, match_max: int | None = None,
                min_prob: float = MIN_PROB) -> list[int]:
        """Up to γ tokens: the likeliest continuation of `context` (module docstring); [] without a match."""
        return propose([(self, match_min)], context, gamma, match_max, min_prob)


def propose(stores: Sequence[tuple[SuffixStore, int]], context: Sequence[int], gamma: int,
            match_max: int | None = None, min_prob: float = MIN_PROB) -> list[int]:
    """Up to γ tokens continuing `context`, from whichever store matches the longest suffix of it (at least
    its own minimum; the first store on a tie), re-matched each time a walk reaches the trie's depth."""
    match_max = match_max or max(store.depth for store, _ in stores)
    proposal: list[int] = []
    prob = 1.0
    context = list(context)
    while len(proposal) < gamma:
        best, node = 0, None
        for store, match_min in stores:
            length, found = store.match(context + proposal, match_min, match_max)
            if length > best:
                best, node = length, found
        if node is None:
            break
        while node.children and len(proposal) < gamma:
            token, child = max(node.children.items(), key=lambda item: (item[1].count, item[1].last))
            prob *= child.count / sum(c.count for c in node.children.values())
            if prob < min_prob:
                return proposal
            proposal.append(token)
            node = child
    return proposal


class SuffixProposer:
    """One sequence's view of a shared `SuffixStore`: its prompt and output join the store as they grow (the
    tokens of the last round are not added), and also a store of its own. Drafts come from the one
    that matches the longer suffix of the context, its own on a tie: another request's continuation is
    taken only where it knows a longer context, so that on unrelated requests the draft stays this
    sequence's prompt lookup. One-hot, so q = None."""

    name = "suffix"

    def __init__(self, store: SuffixStore, match_min: int = 2, shared_min: int = SHARED_MIN) -> None:
        if match_min < 1:
            raise UsageError(f"--ngram-min must be >= 1, got {match_min}")
        self.store = store
        self.shared_min = min(max(match_min, shared_min), store.depth - 1)  # a match is at most D - 1 long
        self.own = SuffixStore(budget=sys.maxsize, depth=store.depth)
        self.match_min = match_min
        self.key = store.open()
        self.own_key = self.own.open()
        self.seen = 0  # tokens of the sequence already in the stores
        weakref.finalize(self, store.close, self.key)  # a finished sequence stops holding active nodes

    def prefill(self, prompt_ids: Sequence[int]) -> None:
        self._catch_up(prompt_ids, ())

    def room(self, length: int) -> int:
        return sys.maxsize  # no model, no context limit of its own

    def rollback(self, length: int) -> None:
        pass  # only emitted tokens enter the stores

    def _catch_up(self, prompt_ids: Sequence[int], generated: Sequence[int]) -> list[int]:
        tokens = [*prompt_ids, *generated]
        self.store.extend(self.key, tokens[self.seen:])
        self.own.extend(self.own_key, tokens[self.seen:])
        self.seen = len(tokens)
        return tokens

    def propose(self, prompt_ids: Sequence[int], generated: Sequence[int], gamma: int,
                generator: torch.Generator) -> Proposal:
        tokens = self._catch_up(prompt_ids, generated)
        if gamma <= 0:
            return Proposal([], None)
        return Proposal(propose([(self.own, self.match_min), (self.store, self.shared_min)], tokens, gamma), None)
