"""The server's decode loop: one worker thread, one batch; requests' rows join it and leave it.

The HTTP side turns each request into a `Job` (one `batch.Row` per choice, each with its own random
stream, settings, stop rules and matcher) and `submit`s it. The worker thread runs
`batch.decode_rows` over the arrivals (continuous batching):

1. a row submitted while the batch runs joins it at the next step (`_arrivals` yields it; when nothing
   is waiting it yields None and the running rows go on);
2. each finished row leaves the batch at once and its job gets a "done" event; a row whose client
   went away is `cancelled` by the HTTP side and leaves at the next step (`Row.cancelled`);
3. when the batch is empty, `decode_rows` returns and the worker waits for the next row.

With a draft (`--draft`), a request that arrives when nothing else runs or waits decodes
speculatively (`_speculate`, `generation.stream` with the draft), alone, on its own sequence cache.
When another row arrives, the speculative row finishes its current round and then joins the batch as
an ordinary row: its cache row is prefilled with its prompt and the tokens it has so far, and it goes
on with the same random stream, stop rules and matcher. It never goes back to speculating.

Other model work (echo's prompt logprobs) is handed to the worker with `call` and runs between steps.

Prefill (`decoding/admission.py`): a request starts from the cells of the longest prefix of its tokens
that the prefix cache holds (an earlier request's prompt and reply: a chat's previous turn) or that a
running row holds (a shared system prompt); a prompt with more than `--prefill-chunk` tokens left is
prefilled in chunks, one per step, so that the running streams go on meanwhile. The prefix cache lives
as long as the server, across batches; `usage.prompt_tokens_details.cached_tokens` reports the reuse.

Events go to the job through `Job.emit`, from the worker thread:
("text", choice, piece, logprobs JSON of the tokens since the last event),
("done", choice, SequenceResult, the remaining logprobs JSON), ("error", message).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from llmgen.decoding.admission import Prefill
from llmgen.decoding.batch import Row, decode_rows
from llmgen.decoding.generation import Speculation, stream
from llmgen.decoding.logprobs import to_json
from llmgen.decoding.sequence import SequenceResult, SequenceState

Event = tuple[Any, ...]
_KEYS = itertools.count()


def next_key() -> int:
    """A key for a new row, unique in this process."""
    return next(_KEYS)


@dataclass(eq=False)
class Job:
    """One request's rows (one per choice) and where its events go."""

    rows: list[Row]
    emit: Callable[[Event], None]  # called from the worker thread; must not block

    def cancel(self) -> None:
        """Drop every row of this job at the next step (safe from any thread)."""
        for row in self.rows:
            row.cancelled = True


Drafting = Speculation  # `--draft`: a draft model (None: the n-gram draft) and its settings


@dataclass
class Counters:
    """What the worker has done, for /health and the tests."""

    admitted: int = 0
    finished: int = 0
    cancelled: int = 0  # admitted, then cancelled (their clients went away)
    cancelled_waiting: int = 0  # cancelled before they were admitted
    failed: int = 0
    speculative: int = 0  # rows that began speculatively
    joined: int = 0  # of those, rows that joined the batch when another request arrived
    speculative_tokens: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0
    batches: int = 0
    max_rows: int = 0  # the most rows decoded together
    extra: dict[str, Any] = field(default_factory=dict)


class Scheduler:
    """The worker thread that owns the model: all decoding happens on it."""

    def __init__(self, loaded: Any, max_batch: int, drafting: Drafting | None = None,
                 prefill: Prefill | None = None) -> None:
        self.loaded = loaded
        self.limits = loaded.info
        self.max_batch = max_batch
        self.drafting = drafting
        self.prefill = prefill
        self.on_stop: list[Callable[[], None]] = []  # run once the worker has stopped (the prompt-cache dir)
        self.counters = Counters()
        self._inbox: queue.SimpleQueue[Row] = queue.SimpleQueue()
        self._tasks: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._owners: dict[int, tuple[Job, int]] = {}  # row key -> (job, choice)
        self._sent: dict[int, int] = {}  # row key -> logprob entries already sent
        self._running: dict[int, Row] = {}  # the rows in the batch now (or speculating)
        self._cache: Any = None  # the rows cache of the batch running now
        self._rows: Any = None  # the rows cache kept between batches
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmgen-decode", daemon=True)

    # -- the HTTP side

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        if self._stop.is_set():
            job.emit(("error", "the server is shutting down"))
            return
        for choice, row in enumerate(job.rows):
            self._owners[row.key] = (job, choice)
            self._inbox.put(row)

    def call(self, func: Callable[[], Any]) -> Future:
        """Run `func` on the worker thread (the model is used by one thread): when idle, between two steps
        of the batch while it has a free slot, or between two speculative rounds."""
        future: Future = Future()
        self._tasks.put((func, future))
        return future

    def cancel_all(self) -> None:
        """Cancel every row, running or waiting (the end of a shutdown's grace period)."""
        for job, _ in list(self._owners.values()):
            job.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what is left (running and waiting rows) and end the worker thread."""
        self._stop.set()
        for row in list(self._running.values()):
            row.cancelled = True
        self._thread.join(timeout)
        self._drain_inbox("the server is shutting down")
        self._run_tasks()
        for hook in self.on_stop:
            hook()

    @property
    def rows(self) -> int:
        """Rows decoding now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        return self._inbox.qsize()

    @property
    def cache_rows(self) -> int:
        """Rows held by the batch's KV cache now (0 when idle: nothing leaks)."""
        cache = self._cache
        return 0 if cache is None else cache.rows

    def prefix_stats(self) -> dict[str, int] | None:
        """The prefix cache's counters, entries and bytes (None: no prefix cache)."""
        prefix = self.prefill.prefix if self.prefill else None
        if prefix is None:
            return None
        return {**prefix.stats.as_dict(), "entries": len(prefix), "bytes": prefix.nbytes, "max_bytes": prefix.max_bytes}

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the worker thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self._run_tasks()
            try:
                row = self._inbox.get(timeout=0.02)
            except queue.Empty:
                continue
            if row.cancelled:
                self._drop_waiting(row)
                continue
            try:
                first: Row | None = row
                if self.drafting is not None and self._inbox.empty() and len(self._owners[row.key][0].rows) == 1:
                    first = self._speculate(row)
                if first is not None or not self._inbox.empty():
                    self._batch([] if first is None else [first])
            except Exception as err:  # NOTE: the worker must outlive any one request's failure
                for key in [row.key, *self._running]:
                    self._fail(key, f"decoding failed: {type(err).__name__}: {err}")

    def _batch(self, first: list[Row]) -> None:
        # NOTE: one rows cache for the server's life, empty between batches: its llama.cpp context (a stream
        # per --max-batch row, hundreds of MB of float32 cells) is made and cleared once, not per batch.
        if self._rows is None or self._rows.rows:
            self._rows = self.loaded.engine.rows(self.max_batch)
        self._cache = self._rows
        self.counters.batches += 1
        try:
            decode_rows(self._cache, self._arrivals(first), self.limits, batch_size=self.max_batch,
                        on_text=self._on_text, on_done=self._on_done, prefill=self.prefill)
        except Exception as err:  # NOTE: one failing row (a grammar error) fails the rows decoding with it
            self._rows = None  # its state is unknown: the next batch gets a new one
            message = f"decoding failed: {type(err).__name__}: {err}"
            for key in list(self._running):
                self._fail(key, message)
        finally:
            self._cache = None

    def _arrivals(self, first: list[Row]) -> Iterator[Row | None]:
        """The rows to admit, as `decode_rows` reads them: None when nothing is waiting now; the end when
        the batch is empty too."""
        for row in first:
            self._enter(row)
            yield row
        while True:
            self._run_tasks()
            if self._stop.is_set():
                for row in self._running.values():
                    row.cancelled = True
                if not self._running:
                    return
                yield None
                continue
            try:
                row = self._inbox.get_nowait()
            except queue.Empty:
                if not self._running:
                    return
                yield None
                continue
            if row.cancelled:
                self._drop_waiting(row)
                continue
            self._enter(row)
            yield row

    def _run_tasks(self) -> None:
        while True:
            try:
                func, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func())
                except Exception as err:
                    future.set_exception(err)

    def _enter(self, row: Row) -> None:
        if row.key not in self._running:
            self.counters.admitted += 1
        self._running[row.key] = row
        self.counters.max_rows = max(self.counters.max_rows, len(self._running))

    def _on_text(self, row: Row, piece: str) -> None:
        job, choice = self._owners[row.key]
        job.emit(("text", choice, piece, self._new_logprobs(row)))

    def _on_done(self, row: Row, result: SequenceResult) -> None:
        result.stats["cached_tokens"] = row.cached
        self._running.pop(row.key, None)
        job, choice = self._owners.pop(row.key)
        remaining = self._new_logprobs(row)
        self._sent.pop(row.key, None)
        if result.finish_reason == "cancelled":
            self.counters.cancelled += 1
        else:
            self.counters.finished += 1
        job.emit(("done", choice, result, remaining))

    def _new_logprobs(self, row: Row) -> list[dict[str, Any]] | None:
        entries = row.state.logprobs if row.state is not None else None
        if row.logprobs is None or entries is None:
            return None
        sent = self._sent.get(row.key, 0)
        self._sent[row.key] = len(entries)
        return to_json(entries[sent:], self.limits.tokenizer)

    def _fail(self, key: int, message: str) -> None:
        self._running.pop(key, None)
        self._sent.pop(key, None)
        owner = self._owners.pop(key, None)
        if owner is not None:
            self.counters.failed += 1
            owner[0].emit(("error", message))

    def _drop_waiting(self, row: Row) -> None:
        """A row cancelled before it was admitted: it never decoded."""
        owner = self._owners.pop(row.key, None)
        self.counters.cancelled_waiting += 1
        if owner is not None:
            row.state = SequenceState(self.limits.tokenizer, row.prompt_ids, row.config, self.limits.eos_token_ids,
                                      self.limits.context_length)
            row.state.reason = "cancelled"
            owner[0].emit(("done", owner[1], row.state.result(), None))

    def _drain_inbox(self, message: str) -> None:
        while True:
            try:
                row = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._fail(row.key, message)

    def _speculate(self, row: Row) -> Row | None:
        """Decode `row` speculatively while it is alone; return it to join the batch when another row
        arrives (at the end of a round), or None when it finished here."""
        drafting, limits = self.drafting, self.limits
        assert drafting is not None  # rows decode speculatively only with --draft
        self._enter(row)
        self.counters.speculative += 1
        row.state = SequenceState(limits.tokenizer, row.prompt_ids, row.config, limits.eos_token_ids,
                                  limits.context_length)
        left_in_round = 0

        def on_round(round_: Any) -> None:
            nonlocal left_in_round
            left_in_round = round_.accepted + 1  # the tokens this round yields

        lm = self._prefixed(row)
        # NOTE: the row keeps its matcher: a row that joins the batch goes on from where the rounds left it.
        source = stream(self.loaded, row.prompt_ids, row.config, row.generator, speculation=drafting,
                        logprobs=row.logprobs, matcher=row.matcher, on_round=on_round, check_draft=False, lm=lm)
        try:
            for token in source:
                left_in_round -= 1
                self.counters.speculative_tokens += 1
                piece = row.state.push(token.id, token.logprob)
                if piece:
                    self._on_text(row, piece)
                if row.state.done:
                    break
                if row.cancelled:
                    row.state.reason = "cancelled"
                    break
                # NOTE: only between rounds: the matcher and the caches have taken the whole round already.
                if left_in_round <= 0:
                    self._run_tasks()
                if left_in_round <= 0 and (not self._inbox.empty() or self._stop.is_set()):
                    self._count(source.stats())
                    self.counters.joined += 1
                    return row
            piece = "" if row.state.reason == "cancelled" else row.state.finish()
            if piece:
                self._on_text(row, piece)
            self._keep(row, lm)
            result = row.state.result()
            stats = source.stats()
            result.stats.update(stats)
            self._count(stats)
            self._on_done(row, result)
            return None
        except Exception as err:
            self._fail(row.key, f"decoding failed: {type(err).__name__}: {err}")
            return None

    def _prefixed(self, row: Row) -> Any:
        """A target sequence for a speculative row, holding the longest prefix the prefix cache has."""
        lm = self.loaded.engine.sequence()
        prefix = self.prefill.prefix if self.prefill else None
        start = prefix.lookup(row.prompt_ids) if prefix is not None and row.reuse else None
        if start is not None:
            lm.load(*start)
            row.cached = start[1]
        return lm

    def _keep(self, row: Row, lm: Any) -> None:
        """A finished speculative row's cells into the prefix cache (cut to the tokens it decided)."""
        prefix = self.prefill.prefix if self.prefill else None
        if prefix is None or row.state is None:
            return
        tokens = row.prompt_ids + row.state.tokens
        keep = min(lm.length, len(tokens))
        lm.rollback(keep)
        prefix.keep(tokens, lm.save, held=keep)

    def _count(self, stats: dict[str, Any]) -> None:
        self.counters.draft_proposed += stats["draft_tokens"]
        self.counters.draft_accepted += stats["accepted_tokens"]
