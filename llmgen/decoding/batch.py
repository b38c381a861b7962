"""Batched decoding: many rows, one forward per step.

A row is one sequence: its prompt, its decoding settings, its own random stream and its own stop
rules (`sequence.SequenceState`), its own `History` (`history.py`: its tokens, matcher and tables, as
the chain reads them). Each step of `decode_rows`:

1. admit: pending rows fill the free slots (continuous batching), or, with `continuous=False`, only
   when the batch is empty (static batches). Rows admitted together with the same prompt share one
   prefill, and the cache row is repeated (this is how `-n N` works). With a `Prefill`
   (`admission.py`), rows start from the prefix cache's cells or a running row's, and long prompts are
   prefilled in chunks between steps; rows that leave give their cells to the prefix cache;
2. pick: the processor chain and the pick, row by row (`pick_rows`);
3. stop: each row's stop rules see its token; finished rows leave the cache at once, and so do rows
   whose caller gave up on them (`Row.cancelled`, set from any thread: a server's client went away);
4. step: one forward over the rows still running.

A long-running caller (`llmgen serve`) admits rows as they arrive: `pending` may yield `None`, which
means "nothing is waiting now": the running rows go on, and `pending` is asked again at the next step
(with no row running, `decode_rows` returns). A row may arrive with a `state` holding tokens already
decided (a request that began speculatively): its cache row is prefilled with its prompt and those tokens.

Why each row's output does not depend on the batch:
- logits: rows never attend to each other; padding is masked (the engine's `Rows`, `loading/engines/`). Only fp32 rounding of
  a different matrix shape can differ, which can flip a greedy pick at a near-tie.
- penalties: counts come from the row's own prompt and tokens, every step.
- constraints: each row owns its matcher (`constraints.py`), which masks only that row's logits.
- randomness: each row draws from its own `torch.Generator`, seeded with `row_seed(seed, index)`,
  so a row's draws do not depend on how many rows run beside it, or in which order they finish.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from llmgen.decoding.admission import Admission, Prefill
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Constraint
from llmgen.decoding.history import process_rows
from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob, token_logprobs
from llmgen.decoding.processors import TokenTables
from llmgen.decoding.row import Row
from llmgen.decoding.sampling import make_generator, pick
from llmgen.decoding.sequence import SequenceResult
from llmgen.loading.engines.torch import Rows
from llmgen.loading.loaded import ModelInfo

DEFAULT_BATCH_SIZE = 8
# NOTE: an odd 64-bit constant (2^64 / golden ratio): row seeds are far apart, and row 0 gets the seed
# itself (torch reads a seed modulo 2^64), so sample 0 of `-n N --seed S` is what `--seed S` alone draws.
_SEED_STRIDE = 0x9E3779B97F4A7C15


def row_seed(seed: int, index: int) -> int:
    return (seed + index * _SEED_STRIDE) % 2**64


def row_generator(seed: int | None, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Row `index`'s random stream: from (seed, index), or fresh entropy without a seed."""
    return make_generator(None if seed is None else row_seed(seed, index), device)


OnText = Callable[[Row, str], None]
OnDone = Callable[[Row, SequenceResult], None]
OnRowError = Callable[[Row, str], None]
# What decodes rows somewhere (this process, Ray actors, vLLM): each row ends in on_done or on_error.
Decoder = Callable[[Iterable[Row], OnDone, OnRowError], None]


def pick_rows(logits: Tensor, rows: list[Row]) -> tuple[Tensor, list[TokenLogprob | None]]:
    """Processors then the pick, for rows that may each have their own settings: [rows, vocab] -> [rows],
    and each row's logprobs of its token (None for rows that did not ask).

    Rows with equal settings go through the processor chain together; each sampled row then draws
    with its own generator.
    """
    tokens = torch.empty(len(rows), dtype=torch.long)
    entries: list[TokenLogprob | None] = [None] * len(rows)
    groups: dict[tuple[DecodingConfig, LogprobSpec | None], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row.config, row.logprobs].append(i)
    for (config, spec), members in groups.items():
        histories = [h for i in members if (h := rows[i].history) is not None]
        assert len(histories) == len(members), "only admitted rows are picked for"
        processed = process_rows(logits[members], histories, config)  # [g, vocab]; each row's own counts and mask
        tokens[members] = pick(processed, config.greedy, [rows[i].generator for i in members]).cpu()
        for j, i in enumerate(members):
            histories[j].accept(int(tokens[i]), processed[j])
        if spec is not None:
            for i, entry in zip(members, token_logprobs(logits[members], processed, tokens[members], spec)):
                entries[i] = entry
    return tokens, entries


def decode_rows(cache: Rows, pending: Iterable[Row | None], limits: ModelInfo, *, batch_size: int = DEFAULT_BATCH_SIZE,
                continuous: bool = True, on_text: OnText | None = None, on_done: OnDone | None = None,
                prefill: Prefill | None = None) -> None:
    """Decode every row of `pending` (read lazily), at most `batch_size` at a time (rows waiting for a
    chunked prefill count).

    `on_text(row, piece)` receives each row's final text as it is decided; `on_done(row, result)`
    each finished row. On an exception (Ctrl-C included) the rows still running are dropped; rows
    already passed to `on_done` are complete. `prefill`: prefix reuse and chunked prefill (`admission.py`).
    """
    queue: Iterator[Row | None] = iter(pending)
    active: list[Row] = []
    admission = Admission(cache, limits, prefill)
    try:
        _loop(admission, queue, batch_size, continuous, on_text, on_done, active)
    except BaseException:
        for row in active:  # NOTE: Ctrl-C: text held back (a possible stop string) is released, as in run_sequence
            piece = row.state.finish() if row.state else ""
            if piece and on_text:
                on_text(row, piece)
        raise


def _loop(admission: Admission, queue: Iterator[Row | None], batch_size: int, continuous: bool,
          on_text: OnText | None, on_done: OnDone | None, active: list[Row]) -> None:
    """The loop of `decode_rows`; `active` (the rows running) is kept up to date in place."""
    cache = admission.cache
    logits = torch.empty(0)
    exhausted = False
    while True:
        # 1. admit (and one chunk of a long prompt's prefill)
        room = batch_size - len(active) - admission.rows_waiting
        if not exhausted and room > 0 and (continuous or not active):
            admitted, exhausted = _take(queue, room)
            if admitted:
                ready, fresh = admission.admit(admitted, active)
                logits = _join(logits, active, ready, fresh)
        if admission.waiting:
            ready, fresh = admission.advance(bool(active), on_done)
            logits = _join(logits, active, ready, fresh)
        if not active:
            if admission.waiting:
                continue
            return
        # 2. pick
        tokens, entries = pick_rows(logits, active)  # [rows]
        # 3. stop
        running = []
        for i, row in enumerate(active):
            if row.cancelled:  # its token is not taken; the row leaves with the finished ones
                row.running.reason = "cancelled"
                if on_done:
                    on_done(row, row.running.result())
                continue
            piece = row.running.push(int(tokens[i]), entries[i])
            if piece and on_text:
                on_text(row, piece)
            if row.running.done:
                _finish(row, on_text, on_done)
            else:
                running.append(i)
        if len(running) < len(active):
            kept = set(running)
            admission.keep([i for i in range(len(active)) if i not in kept], active)
            cache.select(running)
            active[:] = [active[i] for i in running]
            tokens = tokens[running]
        # 4. step
        if active:
            started = time.perf_counter()
            logits = cache.step(tokens)
            admission.stepped(time.perf_counter() - started)


def _join(logits: Tensor, active: list[Row], ready: list[Row], fresh: Tensor) -> Tensor:
    """Append the rows that joined the cache to `active`, and their logits to the batch's."""
    if not ready:
        return logits
    joined = fresh if not active else torch.cat([logits, fresh])
    active.extend(ready)
    return joined


def _take(queue: Iterator[Row | None], count: int) -> tuple[list[Row], bool]:
    """Up to `count` rows, and whether `queue` is exhausted. `None` from the queue: nothing waiting now."""
    taken: list[Row] = []
    for row in queue:
        if row is None:
            return taken, False
        taken.append(row)
        if len(taken) == count:
            return taken, False
    return taken, True


def _finish(row: Row, on_text: OnText | None, on_done: OnDone | None) -> None:
    piece = row.running.finish()
    if piece and on_text:
        on_text(row, piece)
    if on_done:
        on_done(row, row.running.result())


def sample_rows(cache: Rows, prompt_ids: list[int], config: DecodingConfig, limits: ModelInfo, *,
                on_text: OnText | None = None, on_done: OnDone | None = None,
                logprobs: LogprobSpec | None = None, constraint: Constraint | None = None,
                tables: TokenTables | None = None) -> list[SequenceResult]:
    """`-n N`: N samples of one prompt in one batch, sharing one prefill. Results in sample order.
    With `constraint`, each sample gets its own matcher."""
    rows = [Row(i, list(prompt_ids), config, row_generator(config.seed, i, cache.device), logprobs=logprobs,
                matcher=None if constraint is None else constraint.matcher(), tables=tables)
            for i in range(config.n)]
    results: dict[int, SequenceResult] = {}

    def done(row: Row, result: SequenceResult) -> None:
        results[row.key] = result
        if on_done:
            on_done(row, result)

    decode_rows(cache, rows, limits, batch_size=config.n, on_text=on_text, on_done=done)
    return [results[i] for i in range(config.n)]
