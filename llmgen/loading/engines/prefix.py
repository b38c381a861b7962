"""The prefix cache: KV copies of token sequences decoded lately, so that a new sequence that begins the
same way starts from a copy of their cells instead of prefilling them again.

A chat client sends the whole conversation with every turn; turn n + 1 begins with turn n's prompt and
reply, which the cache holds from when turn n finished. Requests that share a system prompt share its
cells the same way. (vLLM's automatic prefix caching, SGLang's radix cache and llama-server's
`cache_prompt` do this; llama.cpp's `seq_cp` shares cells inside one context.)

- `store(tokens, cells)`: an entry, the tokens and a copy of their cells (`engines.base.Cells`). A copy is
  owned by the cache: no row decoding later writes to it, so a dropped stream, a cancelled request or an
  eviction never changes what another request reads. An entry that is a prefix of the new one leaves
  (the new one serves it too: a copy can be cut to any prefix).
- `lookup(tokens)`: the entry sharing the longest prefix with `tokens`, as a start (cells, n) for
  `RowsCache.add` or `SequenceCache.load`. n is at most len(tokens) - 1: a sequence prefills at least its
  last token, whose logits it needs. Shorter matches than `min_reuse` tokens are not worth a copy.
- The cache holds at most `max_bytes` of cells and evicts the least recently used entries first.

Exactness rests on the engine: the copied cells are bit for bit those a prefill writes (the llama.cpp
engine is batch-invariant; tests/loading/test_kv_copies.py), so a reply that reused a prefix equals the
reply without it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmgen.errors import ModelError
from llmgen.loading.engines.base import Cells, Start

MIN_REUSE = 16  # tokens: below this a prefill costs about what a copy does


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """The length of the longest common prefix of two token sequences (lists or arrays)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if len(differ) else n


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0  # tokens not prefilled thanks to the cache
    stored: int = 0
    evicted: int = 0
    errors: int = 0  # copies that failed (the rows went on; their cells were not kept)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class PrefixCache:
    """Copies of recently decoded token sequences' cells, bounded in bytes, least recently used out first."""

    def __init__(self, max_bytes: int, min_reuse: int = MIN_REUSE) -> None:
        self.max_bytes = max_bytes
        self.min_reuse = min_reuse
        self.entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, Cells]] = OrderedDict()  # oldest first
        self.nbytes = 0
        self.stats = PrefixStats()

    def __len__(self) -> int:
        return len(self.entries)

    def longest(self, tokens: Sequence[int]) -> tuple[tuple[int, ...], int] | None:
        """The key of the entry sharing the longest prefix with `tokens`, and that prefix's length."""
        ids = np.asarray(tokens, dtype=np.int64)
        best: tuple[tuple[int, ...], int] | None = None
        for key, (array, _) in self.entries.items():
            n = common_prefix(array, ids)
            if best is None or n > best[1]:
                best = (key, n)
        return best

    def lookup(self, tokens: Sequence[int], beat: int = 0) -> Start | None:
        """A start for `tokens`: an entry's cells and how many of their tokens to keep (≤ len(tokens) - 1);
        None when no entry shares at least `min_reuse` tokens, or at least `beat` (another source's match)."""
        self.stats.lookups += 1
        found = self.longest(tokens)
        if found is None:
            return None
        key, n = found
        n = min(n, len(tokens) - 1)
        if n < max(self.min_reuse, beat):
            return None
        self.entries.move_to_end(key)  # used now
        self.reused(n)
        return self.entries[key][1], n

    def reused(self, n: int) -> None:
        """Count a start of `n` tokens (from here, or from a running row's cells that this cache was asked for)."""
        self.stats.hits += 1
        self.stats.reused_tokens += n

    def keep(self, tokens: Sequence[int], copy: Callable[[], Cells | None], held: int | None = None) -> None:
        """Store the cells `copy()` takes, those of `tokens`' first `cells.length`, unless an entry holds the
        first `held` of `tokens` already (checked before the copy is taken; by default all but the last token,
        which a finished row never fed). A copy that fails costs the reuse, never the caller's work."""
        if self.max_bytes <= 0 or self.covered(tokens[:len(tokens) - 1 if held is None else held]):
            return
        try:
            cells = copy()
        except ModelError:
            self.stats.errors += 1
            return
        if cells is not None:
            self.store(tokens[:cells.length], cells)

    def store(self, tokens: Sequence[int], cells: Cells) -> None:
        """Keep `cells`, the cells of `tokens`, evicting the least recently used entries past the bound."""
        key = tuple(int(t) for t in tokens)
        if self.max_bytes <= 0 or len(key) < self.min_reuse or cells.nbytes > self.max_bytes:
            return
        array = np.asarray(key, dtype=np.int64)
        for other in [k for k, (a, _) in self.entries.items() if len(k) <= len(key) and common_prefix(a, array) == len(k)]:
            self._drop(other)  # a prefix of the new entry: the new one serves it
        self.entries[key] = (array, cells)
        self.nbytes += cells.nbytes
        self.stats.stored += 1
        while self.nbytes > self.max_bytes and self.entries:
            self._drop(next(iter(self.entries)))
            self.stats.evicted += 1

    def covered(self, tokens: Sequence[int]) -> bool:
        """Whether an entry holds all of `tokens` already (storing them again would add nothing)."""
        found = self.longest(tokens)
        return found is not None and found[1] == len(tokens)

    def _drop(self, key: tuple[int, ...]) -> None:
        _, cells = self.entries.pop(key)
        self.nbytes -= cells.nbytes

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
