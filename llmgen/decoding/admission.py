"""How rows enter a batch (`batch.decode_rows`, step 1): their prefill.

Without a `Prefill`, the new rows' distinct prompts are prefilled together in one `RowsCache.add`, and
rows with the same prompt share one prefill (`-n`). With one:

- **prefix reuse**: a row starts from a copy of cells that hold the beginning of its prompt already: an
  entry of the prefix cache (`loading/engines/prefix.py`), or a row running in the batch (requests that
  share a system prompt). Rows admitted together whose prompts share a beginning that nothing holds yet
  go in two rounds: the first of them, then the others from its cells.
- **chunked prefill**: a prompt with more than `chunk` tokens left to prefill is prefilled on a sequence
  of its own, one chunk per step of the batch, so that a long prompt holds the running rows up by one
  chunk at a time, not by its whole prefill; then its cells join the batch. With no row running, it is
  prefilled at once. A chunk is at most `chunk` tokens, and no more than fit in `BUDGET` times the
  batch's step, from the measured seconds of a step and of a prefilled token (so that the running
  streams' inter-token time stays within about 1 + BUDGET times their usual one).
- **keep**: a row that leaves the batch leaves a copy of its cells (prompt and output) to the prefix cache.

The copies are exact (the engines' `save`/`load`), so none of this changes a row's tokens or logprobs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from llmgen.decoding.history import History
from llmgen.decoding.processors.tables import needs_tables, tables_for
from llmgen.decoding.row import Row
from llmgen.decoding.sequence import SequenceResult, SequenceState
from llmgen.loading.engines.base import Engine, RowsCache, SequenceCache, Start
from llmgen.loading.engines.prefix import PrefixCache, common_prefix
from llmgen.loading.loaded import ModelInfo

BUDGET = 1.5  # a chunk's prefill may take this many times a step of the running batch
FIRST_CHUNK = 8  # tokens, before anything is measured
DECAY = 0.8  # weight of the past in the running means of the timings


@dataclass
class Prefill:
    """How new rows are prefilled: from the prefix cache (None: never from a copy) and in chunks of
    `chunk` tokens (0: whole), on sequences that `engine` makes."""

    prefix: PrefixCache | None = None
    chunk: int = 0
    engine: Engine | None = None


@dataclass(eq=False)
class _Waiting:
    """A prompt being prefilled in chunks, and the rows that will start from it."""

    key: tuple[int, ...]
    rows: list[Row]
    sequence: SequenceCache
    done: int  # tokens of key[:-1] that the sequence holds
    cached: int  # of those, tokens copied from a start


@dataclass(eq=False)
class Admission:
    """The prefill of the rows entering one batch (`cache`), and their cells leaving it."""

    cache: RowsCache
    limits: ModelInfo
    prefill: Prefill | None = None
    waiting: list[_Waiting] = field(default_factory=list)
    step_seconds: float | None = None  # running mean of a step of the batch
    token_seconds: float | None = None  # running mean of a prefilled token, in chunks

    def stepped(self, seconds: float) -> None:
        """The batch took a step of `seconds`."""
        self.step_seconds = seconds if self.step_seconds is None else DECAY * self.step_seconds + (1 - DECAY) * seconds

    def chunk_size(self) -> int:
        """The tokens of the next chunk: at most `chunk`, and about `BUDGET` steps' worth of prefill."""
        assert self.prefill is not None
        if self.step_seconds is None or self.token_seconds is None:
            return min(self.prefill.chunk, FIRST_CHUNK)
        return max(1, min(self.prefill.chunk, int(BUDGET * self.step_seconds / self.token_seconds)))

    @property
    def rows_waiting(self) -> int:
        return sum(len(w.rows) for w in self.waiting)

    def _ready(self, row: Row) -> tuple[int, ...]:
        """Give an arriving row its stop rules, tables and history; the tokens its cache row must hold."""
        limits = self.limits
        if row.state is None:  # else the row holds tokens already (batch.py's docstring)
            row.state = SequenceState(limits.tokenizer, row.prompt_ids, row.config, limits.eos_token_ids,
                                      limits.context_length)
        if row.tables is None and needs_tables(row.config):  # shared by the rows with the same settings
            row.tables = tables_for(row.config, limits.tokenizer, limits.eos_token_ids)
        if row.history is None:  # NOTE: tokens decided before admission carry no Mirostat surprise
            row.history = History(row.prompt_ids, row.config, row.tables, row.matcher, list(row.running.tokens))
        return tuple(row.prompt_ids + row.running.tokens)

    def admit(self, rows: list[Row], active: list[Row]) -> tuple[list[Row], Tensor]:
        """Prefill what `rows` need (the batch runs `active`); the rows ready now, in the cache's order after
        `active`, and their logits [ready, vocab]. The others wait for their chunks (`advance`)."""
        groups: dict[tuple[int, ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(self._ready(row), []).append(row)
        prefill = self.prefill
        if prefill is None or (prefill.prefix is None and not prefill.chunk):
            return self._add(list(groups.items()), [None] * len(groups))
        ready: list[Row] = []
        logits: list[Tensor] = []
        later: list[tuple[tuple[int, ...], list[Row]]] = []
        for round_ in range(2):
            now: list[tuple[tuple[int, ...], list[Row]]] = []
            starts: list[Start | None] = []
            unheld: list[np.ndarray] = []  # prompts of this round that start from nothing
            for key, members in (list(groups.items()) if round_ == 0 else later):
                start = self._start(key, active + ready) if all(row.reuse for row in members) else None
                array = np.asarray(key, dtype=np.int64)
                if round_ == 0 and start is None and prefill.prefix is not None and any(
                        common_prefix(array, other) >= prefill.prefix.min_reuse for other in unheld):
                    later.append((key, members))  # after the row it shares a beginning with
                    continue
                cached = 0 if start is None else start[1]
                if prefill.chunk and len(key) - cached > prefill.chunk + 1 and (active or ready or self.waiting):
                    self._wait(key, members, start)
                    continue
                if start is None:
                    unheld.append(array)
                for row in members:
                    row.cached = cached
                now.append((key, members))
                starts.append(start)
            if now:
                more, fresh = self._add(now, starts)
                ready += more
                logits.append(fresh)
            if round_ == 0:
                groups = {}
        if not logits:
            return [], torch.empty(0)
        return ready, torch.cat(logits)

    def _start(self, key: Sequence[int], sources: Sequence[Row]) -> Start | None:
        """Where the cells of `key`'s longest held beginning are: a running row, or the prefix cache (which
        wins a tie)."""
        prefix = self.prefill.prefix if self.prefill else None
        if prefix is None:
            return None
        array = np.asarray(key, dtype=np.int64)
        best, best_row = 0, -1
        for i, row in enumerate(sources):
            n = common_prefix(row.prompt_ids + row.running.tokens, array)
            if n > best:
                best, best_row = n, i
        best = min(best, len(key) - 1)
        start = prefix.lookup(key, beat=best)
        if start is not None or best_row < 0 or best < prefix.min_reuse:
            return start
        cells = self.cache.save(best_row)  # a copy: the row goes on decoding
        if cells is None:  # this cache cannot copy a row: the prefix cache's shorter match, if any
            return prefix.lookup(key)
        prefix.reused(best)
        return cells, best

    def _add(self, groups: list[tuple[tuple[int, ...], list[Row]]],
             starts: Sequence[Start | None]) -> tuple[list[Row], Tensor]:
        """One `add` of the groups' prompts, then the cache rows repeated so that each row has its own."""
        before = self.cache.rows
        prompts = [key for key, _ in groups]
        logits = self.cache.add(prompts, starts) if any(starts) else self.cache.add(prompts)  # [groups, vocab]
        where = [g for g, (_, members) in enumerate(groups) for _ in members]
        if len(where) > len(groups):
            self.cache.select(list(range(before)) + [before + g for g in where])
        return [row for _, members in groups for row in members], logits[where]

    def _wait(self, key: tuple[int, ...], rows: list[Row], start: Start | None) -> None:
        assert self.prefill is not None and self.prefill.engine is not None, "chunked prefill needs the engine"
        sequence = self.prefill.engine.sequence()
        done = 0
        if start is not None:
            sequence.load(start[0], start[1])
            done = start[1]
        self.waiting.append(_Waiting(key, rows, sequence, done, done))

    def advance(self, running: bool, on_done: Callable[[Row, SequenceResult], None] | None
                ) -> tuple[list[Row], Tensor]:
        """Prefill one chunk of the first waiting prompt (all of them when no row is `running`); the rows
        whose prompt is complete, now in the cache, and their logits [ready, vocab]."""
        assert self.prefill is not None or not self.waiting
        ready: list[Row] = []
        logits: list[Tensor] = []
        while self.waiting:
            waiting = self.waiting[0]
            live = [row for row in waiting.rows if not row.cancelled]
            for row in waiting.rows:
                if row.cancelled:  # gone before its prefill ended: it never decoded
                    row.running.reason = "cancelled"
                    if on_done:
                        on_done(row, row.running.result())
            waiting.rows = live
            end = len(waiting.key) - 1  # the last token is prefilled in the batch, for its logits
            if live and waiting.done < end:
                chunk = self.chunk_size() if running or ready else end
                upto = min(end, waiting.done + chunk)
                started = time.perf_counter()
                waiting.sequence.forward(waiting.key[waiting.done:upto])
                per_token = (time.perf_counter() - started) / (upto - waiting.done)
                if running or ready:
                    self.token_seconds = per_token if self.token_seconds is None else (
                        DECAY * self.token_seconds + (1 - DECAY) * per_token)
                waiting.done = upto
            if live and waiting.done < end:
                break
            self.waiting.pop(0)
            if not live:
                continue
            cells = waiting.sequence.save()
            start = None if cells is None else (cells, end)
            for row in live:
                row.cached = waiting.cached
            more, fresh = self._add([(waiting.key, live)], [start])
            ready += more
            logits.append(fresh)
            if running or ready:
                break
        return ready, (torch.cat(logits) if logits else torch.empty(0))

    def keep(self, leaving: Sequence[int], active: Sequence[Row]) -> None:
        """Copy the cells of the rows `leaving` (cache rows; `active[i]` is row i) into the prefix cache."""
        prefix = self.prefill.prefix if self.prefill else None
        if prefix is None:
            return
        for i in leaving:
            row = active[i]
            prefix.keep(row.prompt_ids + row.running.tokens, functools.partial(self.cache.save, i))
