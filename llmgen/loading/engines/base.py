"""The engine interface: what decoding needs of a model, and nothing more.

An engine runs a model and keeps its KV cache. Decoding code (`llmgen/decoding`) sees only these
three protocols; it never calls a model, builds a cache or reshapes one.

- `SequenceCache`: one sequence. `forward(ids)` appends tokens and returns float32 logits
  [k, vocab] (the last position only, or every position with `all_logits`, as the speculative
  verify needs); `rollback(n)` forgets every token after the first n; `length` counts the tokens held.
- `RowsCache`: many sequences decoded together, one forward per step. `add(prompts)` prefills new
  rows after the running ones, `step(tokens)` appends one token per row, and `select(indices)` keeps,
  drops or repeats rows (finished rows leave; beams follow their parents; `-n` repeats one prefill).
- `Engine`: makes either kind of cache for one loaded model, and names itself (`torch`, `llamacpp`).

Both caches can copy a sequence's KV out (`save`: a `Cells`, the engine's own copy) and start a sequence
from such a copy cut to its first n tokens (`load`, `add(prompts, starts)`), which the prefix cache
(`prefix.py`), prompt-cache files and chunked prefill use. A copy is taken at once and owned by whoever
took it: nothing decoding later can change it. `save` returns None where an engine cannot copy a cache
(a sliding-window torch cache); callers then prefill as before.

Implementations: `engines/torch.py` (transformers' forward, and the lean int4 Llama of `quant/`);
`engines/llamacpp.py` (llama.cpp's `llama_decode` through llama-cpp-python's low-level API).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor


class Cells(Protocol):
    """A copy of one sequence's KV cache (`save`), opaque but for its size."""

    @property
    def length(self) -> int: ...  # tokens held

    @property
    def nbytes(self) -> int: ...


Start = tuple[Cells, int]  # a new sequence starts as the first n tokens of these cells


class SequenceCache(Protocol):
    """One sequence's KV cache behind a model forward."""

    length: int  # tokens in the cache

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> Tensor:
        """Append `token_ids`; float32 logits [len(token_ids) if all_logits else 1, vocab]."""
        ...

    def rollback(self, length: int) -> None:
        """Forget every token after the first `length`."""
        ...

    def save(self) -> Cells | None:
        """A copy of the cache (None: this cache cannot be copied)."""
        ...

    def load(self, cells: Cells, length: int) -> None:
        """Hold the first `length` tokens of `cells` instead of what it held."""
        ...


class RowsCache(Protocol):
    """The KV cache of many rows decoded in one forward per step."""

    device: torch.device

    @property
    def rows(self) -> int: ...

    def add(self, prompts: Sequence[Sequence[int]], starts: Sequence[Start | None] | None = None) -> Tensor:
        """Prefill `prompts` as new rows after the existing ones; their logits [len(prompts), vocab].
        `starts[i]` = (cells, n): prompt i's first n tokens (n < its length) are those cells' first n, copied
        in rather than prefilled."""
        ...

    def save(self, row: int) -> Cells | None:
        """A copy of row `row`'s cache (None: this cache cannot be copied)."""
        ...

    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (`tokens` [rows]); the next-token logits [rows, vocab]."""
        ...

    def select(self, indices: Sequence[int]) -> None:
        """Keep the rows `indices`, in that order; an index may repeat (a copy of that row)."""
        ...


class Engine(Protocol):
    """What runs one loaded model: a factory of caches."""

    name: str  # "torch" or "llamacpp": shown by --dump-config and in the statistics
    device: torch.device

    def sequence(self) -> SequenceCache:
        """An empty single-sequence cache."""
        ...

    def rows(self, capacity: int = 1) -> RowsCache:
        """An empty cache for batched rows; `capacity`: how many rows the caller expects at once (a hint:
        the llama.cpp engine sizes its streams by it, so that rows arriving later need no larger context)."""
        ...


class SerialRows:
    """The `RowsCache` operations over one `SequenceCache` per row, for any engine: rows are correct and
    independent, but each step runs one forward per row. The torch engine uses it for a model with its own
    single-sequence cache and no batched one; the tests use it as the one-by-one reference of batched rows
    (int4 and llama.cpp beams equal beams over it)."""

    def __init__(self, new_sequence: Callable[[], SequenceCache], device: torch.device) -> None:
        self.new_sequence = new_sequence
        self.device = device
        self.lms: list[SequenceCache] = []
        self.tokens: list[list[int]] = []  # each row's tokens, to rebuild a repeated row's cache

    @property
    def rows(self) -> int:
        return len(self.lms)

    def add(self, prompts: Sequence[Sequence[int]], starts: Sequence[Start | None] | None = None) -> Tensor:
        logits = []
        for prompt, start in zip(prompts, starts or [None] * len(prompts)):
            lm = self.new_sequence()
            done = 0
            if start is not None:
                lm.load(start[0], start[1])
                done = start[1]
            logits.append(lm.forward(list(prompt)[done:]))  # [1, vocab]
            self.lms.append(lm)
            self.tokens.append(list(prompt))
        return torch.cat(logits)  # [k, vocab]

    def save(self, row: int) -> Cells | None:
        return self.lms[row].save()

    def step(self, tokens: Tensor) -> Tensor:
        for row, token in zip(self.tokens, tokens.tolist()):
            row.append(token)
        return torch.cat([lm.forward([row[-1]]) for lm, row in zip(self.lms, self.tokens)])  # [rows, vocab]

    def select(self, indices: Sequence[int]) -> None:
        lms: list[SequenceCache] = []
        tokens: list[list[int]] = []
        used: set[int] = set()
        for i in indices:
            if i in used:  # a repeated row gets its own cache, rebuilt from its tokens
                lm = self.new_sequence()
                lm.forward(self.tokens[i])
            else:
                lm = self.lms[i]
            used.add(i)
            lms.append(lm)
            tokens.append(list(self.tokens[i]))
        self.lms, self.tokens = lms, tokens
