"""The llama.cpp engine: `llama_decode` through llama-cpp-python's low-level API, under llmgen's decoding.

Only the model forward and the KV cache are llama.cpp's. Every processor, the pick, the verifier,
constraints, logprobs, beams and batching stay llmgen's code: this module hands back float32 logits and
nothing else (no llama.cpp sampler is ever built).

One `llama_context` per cache. A context holds one KV stream per sequence (`kv_unified` off); a cell
of a stream holds one token's keys and values, and a sequence's token at position p sits in cell p:

    sequence() -> LlamaSequence: one context, seq_id 0, positions 0..length-1.
        forward(ids)       one llama_decode of len(ids) tokens at the next positions; logits for the
                           last one, or for every one with all_logits (the speculative verify: γ+1 rows
                           from one llama_decode)
        rollback(n)        llama_memory_seq_rm(0, n, -1): forget positions n and later

    rows() -> LlamaRows: one context, one seq_id and one stream per row:
        add(prompts)       each prompt under the lowest free seq_id, at positions 0..len-1, in as few
                           llama_decode calls as n_batch allows; the logits at each prompt's last token
        step(tokens)       one llama_decode with one token per row (row r at position lengths[r])
        select(indices)    a kept row keeps its seq_id; a repeated row gets a new seq_id whose stream
                           receives a copy of the parent's (llama_memory_seq_cp); a dropped row's cells
                           are freed (llama_memory_seq_rm)

Batch invariance: a row's logits depend on its own tokens only, bit for bit, alone or in any batch, in
a verify or after a rollback (docs/engines.md says where the batch shape entered, op by op). That takes
one stream per row (`_Context`'s NOTE), the model loaded without weight repacking and ggml's tiled
K-quant matmul off (`loading/llamacpp.py`), a build without llamafile's sgemm (`batch_invariance`
there reports it), and the float32 cache below.

NOTE: logits are copied out of llama.cpp's output buffer (one memcpy of [k, vocab] float32 per forward,
0.05 ms for a 49k vocabulary, under 0.5% of a step): the next llama_decode on the context overwrites
that buffer, and may reallocate it, while decoding code can still hold the tensor of the step before.
The view itself is made without a copy (`torch.frombuffer` over the pointer); only the clone copies.

NOTE: the KV cache is float32, not llama.cpp's default f16. With an f16 cache llama.cpp's logits depend
on the shape of the batch: on the SmolLM2 Q4_1 file, a 3-token verify batch moved logits by up to 1.0
(out of ~27) against the same tokens decoded one at a time, and a 16-token prefill by 1.7, enough to
flip greedy picks and to move logprobs by ~1e-2. It costs twice the KV memory (contexts start at 512 cells and grow) and no
measurable speed at these sizes (SmolLM2, 1 thread, 64 tokens: 33.9-44.6 tok/s f32, 34.7-45.2 f16).
The other settings that touch numerics are `llama_cpp.Llama`'s defaults (flash attention off,
n_batch = n_ubatch = 512, `swa_full` on so that a rollback inside a sliding window stays exact), so that
greedy decoding here gives llama.cpp's own tokens for the same cache type.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from llmgen.errors import ModelError, PromptError
from llmgen.loading.engines import base
from llmgen.loading.engines.base import Start
from llmgen.loading.engines.llamacpp_state import CellState, StateFormatError, load_sequence, save_sequence

N_BATCH = 512  # tokens per llama_decode call (llama_cpp.Llama's default)
MAX_ROWS = 256  # seq_ids per rows context (llama.h: LLAMA_MAX_SEQ)
MAX_ROWS_CELLS = 65536  # cells over all streams of one rows context
GGML_TYPE_F32 = 0


def _lib() -> Any:
    import llama_cpp

    return llama_cpp


class LlamaCppModel:
    """A llama.cpp model loaded from a GGUF file (memory-mapped): the pointer, its vocabulary, the threads."""

    def __init__(self, pointer: Any, path: str, threads: int, context_length: int) -> None:
        lib = _lib()
        self.lib = lib
        self.pointer = pointer
        self.path = path
        self.vocab = lib.llama_model_get_vocab(pointer)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self.vocab))
        self.threads = threads
        self.context_length = context_length
        self.n_swa = int(lib.llama_model_n_swa(pointer))  # the sliding window (0: none)
        self.device = torch.device("cpu")

    def close(self) -> None:
        if self.pointer is not None:
            self.lib.llama_model_free(self.pointer)
            self.pointer = None

    def __del__(self) -> None:
        self.close()


class _Context:
    """One llama_context with one KV stream per sequence (`n_seq` streams of `cells` cells each), and its
    batch: decode (tokens, positions, seq_ids) and copy out the logits asked for.

    NOTE: one stream per sequence (`kv_unified = False`), so that a sequence's token at position p is
    always in cell p of its own stream, whatever the other sequences hold: the attention's sums then run
    over the same cells in the same SIMD lanes alone and in any batch (docs/engines.md, batch invariance).
    """

    def __init__(self, model: LlamaCppModel, cells: int, n_seq: int) -> None:
        lib = model.lib
        self.lib, self.model = lib, model
        params = lib.llama_context_default_params()
        params.n_ctx = cells * n_seq
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = n_seq
        params.kv_unified = False  # a stream per sequence (the class's NOTE)
        params.n_threads = params.n_threads_batch = model.threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama_cpp.Llama's default
        params.type_k = params.type_v = GGML_TYPE_F32  # batch-invariant logits (the module's second NOTE)
        params.no_perf = True
        self.pointer = lib.llama_init_from_model(model.pointer, params)
        if self.pointer is None:
            raise ModelError(f"llama.cpp could not create a context of {n_seq} x {cells} tokens for {model.path}")
        self.cells = int(lib.llama_n_ctx_seq(self.pointer))  # per sequence
        self.n_ctx = self.cells  # what one sequence may hold
        self.n_seq = n_seq
        self.memory = lib.llama_get_memory(self.pointer)
        self.batch = lib.llama_batch_init(N_BATCH, 0, 1)
        self.vocab_size = model.vocab_size

    def close(self) -> None:
        if self.pointer is not None:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.pointer)
            self.pointer = None

    def __del__(self) -> None:
        self.close()

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int],
               wanted: Sequence[bool]) -> Tensor:
        """Decode the tokens (in chunks of N_BATCH); float32 logits [sum(wanted), vocab] in token order.

        NOTE: the tokens go to llama.cpp grouped by seq_id in increasing order (a stable sort): with one
        stream per sequence llama.cpp puts consecutive seq_ids in one micro-batch and splits elsewhere.
        The logits come back in the caller's order."""
        order = sorted(range(len(tokens)), key=lambda i: seq_ids[i])
        out = []
        for start in range(0, len(order), N_BATCH):
            chunk = order[start:start + N_BATCH]
            batch = self.batch
            for j, i in enumerate(chunk):
                batch.token[j] = tokens[i]
                batch.pos[j] = positions[i]
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq_ids[i]
                batch.logits[j] = wanted[i]
            batch.n_tokens = len(chunk)
            code = self.lib.llama_decode(self.pointer, batch)
            if code != 0:
                raise _decode_error(code, self.cells)
            count = sum(1 for i in chunk if wanted[i])
            if count:
                out.append(self._logits(count))
        if not out:
            return torch.empty((0, self.vocab_size), dtype=torch.float32)
        logits = out[0] if len(out) == 1 else torch.cat(out)  # [wanted, vocab], in seq_id order
        sent = [i for i in order if wanted[i]]  # the caller's index of each row of `logits`
        if sent == sorted(sent):
            return logits
        return logits[torch.argsort(torch.tensor(sent))]  # back to the caller's order

    def _logits(self, count: int) -> Tensor:
        """The `count` output rows of the last decode, copied (see the module's NOTE)."""
        pointer = self.lib.llama_get_logits(self.pointer)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if address is None:
            raise ModelError("llama.cpp returned no logits")
        buffer = (ctypes.c_float * (count * self.vocab_size)).from_address(address)
        view = torch.frombuffer(buffer, dtype=torch.float32).view(count, self.vocab_size)  # no copy
        return view.clone()  # [count, vocab]

    def grown(self, cells: int, seq_ids: Sequence[int], lengths: Sequence[int]) -> _Context:
        """A context of as many streams, each of `cells` cells, holding the same sequences (of `lengths`
        tokens) under the same seq_ids, each one's cells copied bit for bit (`save` / `load`), so that
        growing never changes a logit. Closes this one."""
        bigger = _Context(self.model, cells, self.n_seq)
        for seq, length in zip(seq_ids, lengths):
            try:
                bigger.load(seq, self.save(seq, length))
            except ModelError:
                bigger.close()
                raise
        self.close()
        return bigger

    def save(self, seq_id: int, length: int) -> Cells:
        """A copy of sequence `seq_id` (`length` tokens).

        NOTE: beyond a sliding window, from the whole context's state, which keeps the cells the window
        masks (llamacpp_state's NOTE); the sequence's own state otherwise, which copies only its cells."""
        whole = 0 < self.model.n_swa < length
        try:
            return Cells(save_sequence(self.lib, self.pointer, seq_id, whole), length)
        except StateFormatError as err:
            raise ModelError(f"llama.cpp: cannot read the state of sequence {seq_id} ({err})") from None

    def load(self, seq_id: int, cells: Cells, length: int | None = None) -> None:
        """Sequence `seq_id` := the first `length` tokens of `cells` (all of them by default)."""
        if not load_sequence(self.lib, self.pointer, seq_id, cells.state, self.n_seq):
            raise ModelError(f"llama.cpp: cannot restore {cells.length} tokens as sequence {seq_id} of a "
                             f"context of {self.n_seq} x {self.cells} tokens")
        if length is not None and length < cells.length:
            self.remove(seq_id, length)

    def remove(self, seq_id: int, start: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq_id, start, -1)

    def copy(self, source: int, target: int) -> None:
        """The whole sequence `source` as `target` (another stream: llama.cpp copies the stream's cells at the
        next decode, so the copy sits in the same cells as its source)."""
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)


class Cells:
    """A copy of one sequence's KV cells (`engines.base.Cells`): llama.cpp's state, any stream count."""

    def __init__(self, state: CellState, length: int) -> None:
        self.state = state
        self.length = length

    @property
    def nbytes(self) -> int:
        return self.state.nbytes


def cells(need: int, current: int, limit: int) -> int:
    """The size of a context for `need` tokens: at least twice the current one (so that a growing sequence
    is copied O(log n) times), a multiple of 256, at least 512, at most `limit`.

    NOTE: a context's KV cache is allocated and cleared when it is made (a 8192-token cache of SmolLM2
    is 190 MB and 0.2-0.5 s of page faults), so contexts start small and grow as the tokens come."""
    size = max(need, 2 * current, 512)
    return min(limit, -(-size // 256) * 256)


def _decode_error(code: int, n_ctx: int) -> Exception:
    if code == 1:
        return PromptError(f"llama.cpp: the KV cache ({n_ctx} tokens) is full; shorten the prompt or the output")
    return ModelError(f"llama.cpp: llama_decode failed (code {code})")


class LlamaSequence:
    """One sequence on its own llama.cpp context (`engines.base.SequenceCache`)."""

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.context: _Context | None = None  # made on the first forward, as large as it needs
        self.device = model.device
        self.length = 0  # tokens in the cache

    def _room(self, need: int) -> _Context:
        """A context with at least `need` cells (see `cells`)."""
        if need > self.model.context_length:
            raise PromptError(f"the sequence would be {need} tokens, but the llama.cpp context is "
                              f"{self.model.context_length} tokens")
        if self.context is None:
            self.context = _Context(self.model, cells(need, 0, self.model.context_length), 1)
        elif need > self.context.n_ctx:
            self.context = self.context.grown(cells(need, self.context.n_ctx, self.model.context_length), [0],
                                              [self.length])
        return self.context

    @torch.inference_mode()
    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> Tensor:
        """Append `token_ids`; float32 logits [len(token_ids) if all_logits else 1, vocab]."""
        ids = [int(t) for t in token_ids]
        k = len(ids)
        context = self._room(self.length + k)
        wanted = [True] * k if all_logits else [False] * (k - 1) + [True]
        logits = context.decode(ids, range(self.length, self.length + k), [0] * k, wanted)
        self.length += k
        return logits  # [k or 1, vocab]

    def rollback(self, length: int) -> None:
        """Forget every token after the first `length`."""
        if length < self.length and self.context is not None:
            self.context.remove(0, length)
            self.length = length

    def save(self) -> Cells | None:
        """A copy of the sequence's cells."""
        return None if self.context is None or not self.length else self.context.save(0, self.length)

    def load(self, cells: base.Cells, length: int) -> None:
        """Hold the first `length` tokens of `cells` (a copy from any llama.cpp context of this model)."""
        assert isinstance(cells, Cells), "a llama.cpp sequence loads llama.cpp cells"
        context = self._room(cells.length)
        context.load(0, cells, length)
        self.length = length


class LlamaRows:
    """Many rows in one llama.cpp context, one seq_id and one KV stream each (`engines.base.RowsCache`).

    Row r is seq_id `seqs[r]`. A new row takes the lowest free seq_id, and a step first moves the highest
    rows into any gap below them (`_compact`), so that the rows' seq_ids stay consecutive: llama.cpp
    decodes consecutive streams in one micro-batch. The context has `n_seq` streams of `cells` cells and
    grows (more streams, or longer ones) by copying each row's state bit for bit."""

    def __init__(self, model: LlamaCppModel, capacity: int = 1) -> None:
        self.model = model
        self.device = model.device
        self.capacity = max(1, min(capacity, MAX_ROWS))  # streams of the first context (the caller's hint)
        self.context: _Context | None = None  # made on the first add
        self.seqs: list[int] = []  # row r is seq_id seqs[r]
        self.tokens: list[list[int]] = []  # each row's tokens (to move rows to a context with more streams)

    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def lengths(self) -> list[int]:
        """Tokens per row: the next position of row r."""
        return [len(row) for row in self.tokens]

    def _room(self, streams: int, longest: int) -> _Context:
        """A context with at least `streams` streams of at least `longest` cells each."""
        if longest > self.model.context_length:
            raise PromptError(f"a row would be {longest} tokens, but the llama.cpp context is "
                              f"{self.model.context_length} tokens")
        if streams > MAX_ROWS:
            raise ModelError(f"the llama.cpp engine decodes at most {MAX_ROWS} rows at once")
        context = self.context
        if context is None:
            n_seq, size = max(streams, self.capacity), cells(longest, 0, self.model.context_length)
        else:
            if streams <= context.n_seq and longest <= context.cells:
                return context
            n_seq = context.n_seq if streams <= context.n_seq else min(MAX_ROWS, max(streams, 2 * context.n_seq))
            size = context.cells if longest <= context.cells else cells(longest, context.cells, self.model.context_length)
        if n_seq * size > MAX_ROWS_CELLS:
            raise PromptError(f"the llama.cpp engine holds at most {MAX_ROWS_CELLS} cells over all rows "
                              f"({n_seq} rows of {size}); use a smaller --batch-size or -n")
        if context is None:
            self.context = _Context(self.model, size, n_seq)
        elif n_seq == context.n_seq:
            self.context = context.grown(size, self.seqs, self.lengths)
        else:  # llama.cpp restores a sequence's state only into as many streams as it came from
            self.context = _Context(self.model, size, n_seq)
            context.close()
            self._prefill(self.context, self.seqs, self.tokens)
        return self.context

    def _prefill(self, context: _Context, seqs: Sequence[int], prompts: Sequence[Sequence[int]],
                 done: Sequence[int] | None = None) -> Tensor:
        """Each prompt under its seq_id, from position `done[i]` (0: the whole prompt); the logits at each
        one's last token [len(prompts), vocab].

        NOTE: this is also how rows move to a context with more streams: decoded again from their tokens.
        The engine is batch-invariant (the module's NOTEs), so the cells come out bit for bit as they were."""
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        wanted: list[bool] = []
        for seq, prompt, start in zip(seqs, prompts, done or [0] * len(prompts)):
            tokens += [int(t) for t in prompt[start:]]
            positions += range(start, len(prompt))
            seq_ids += [seq] * (len(prompt) - start)
            wanted += [False] * (len(prompt) - start - 1) + [True]
        try:
            return context.decode(tokens, positions, seq_ids, wanted)  # [len(prompts), vocab]
        except Exception:
            for seq in seqs:
                context.remove(seq)
            raise

    def _free_ids(self, count: int, held: Iterable[int] | None = None) -> list[int]:
        """The `count` lowest seq_ids that no row (or none of `held`) holds."""
        used, seq = set(self.seqs if held is None else held), 0
        free: list[int] = []
        while len(free) < count:
            if seq not in used:
                free.append(seq)
            seq += 1
        return free

    def _compact(self) -> None:
        """Move the rows with the highest seq_ids into the gaps below them (a stream copy each)."""
        context = self.context
        if context is None or not self.seqs or max(self.seqs) == len(self.seqs) - 1:
            return
        holes = iter(self._free_ids(len(self.seqs)))
        for r in sorted(range(len(self.seqs)), key=lambda r: -self.seqs[r]):
            hole = next(holes)
            if hole > self.seqs[r]:
                break
            context.copy(self.seqs[r], hole)
            context.remove(self.seqs[r])
            self.seqs[r] = hole

    @torch.inference_mode()
    def add(self, prompts: Sequence[Sequence[int]], starts: Sequence[Start | None] | None = None) -> Tensor:
        """Prefill `prompts` as new rows after the existing ones; their logits [len(prompts), vocab].
        A row with a start (cells, n) gets the first n tokens of those cells, then its prompt from n."""
        new = self._free_ids(len(prompts))
        longest = max([len(p) for p in prompts] + self.lengths + [1])
        context = self._room(max(new + [-1]) + 1, longest)
        ids = [[int(t) for t in prompt] for prompt in prompts]
        done = []
        for seq, prompt, start in zip(new, ids, starts or [None] * len(prompts)):
            if start is None:
                done.append(0)
                continue
            cells, n = start
            assert isinstance(cells, Cells) and 0 < n < len(prompt), "a start holds a proper prefix of the prompt"
            context.load(seq, cells, n)
            done.append(n)
        logits = self._prefill(context, new, ids, done)  # [len(prompts), vocab]
        self.seqs += new
        self.tokens += ids
        return logits

    def save(self, row: int) -> Cells | None:
        """A copy of row `row`'s cells."""
        return None if self.context is None else self.context.save(self.seqs[row], len(self.tokens[row]))

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (`tokens` [rows]); the next-token logits [rows, vocab]."""
        ids = [int(t) for t in tokens.tolist()]
        self._compact()
        lengths = self.lengths
        context = self._room(len(self.seqs), max(lengths) + 1)
        logits = context.decode(ids, lengths, self.seqs, [True] * len(ids))  # [rows, vocab]
        for row, token in zip(self.tokens, ids):
            row.append(token)
        return logits

    def select(self, indices: Sequence[int]) -> None:
        """Keep the rows `indices`, in that order; a repeated index is a copy of that row (a stream copy)."""
        context, used = self.context, set(indices)
        for i, seq in enumerate(self.seqs):
            if i not in used and context is not None:
                context.remove(seq)
        kept = {i: (self.seqs[i], self.tokens[i]) for i in sorted(used)}
        repeats = len(indices) - len(used)
        fresh = self._free_ids(repeats, [seq for seq, _ in kept.values()])
        if repeats:  # room for the copies first, holding the kept rows only
            self.seqs = [seq for seq, _ in kept.values()]
            self.tokens = [tokens for _, tokens in kept.values()]
            context = self._room(max(fresh) + 1, max(self.lengths + [1]))
        seqs, histories, placed, targets = [], [], set(), iter(fresh)
        for i in indices:
            seq, tokens = kept[i]
            if i in placed and context is not None:  # a copy: its own stream and its own token list
                target = next(targets)
                context.copy(seq, target)
                seq, tokens = target, list(tokens)
            placed.add(i)
            seqs.append(seq)
            histories.append(tokens)
        self.seqs, self.tokens = seqs, histories


class LlamaCppEngine:
    """The engine interface over a llama.cpp model: each cache is its own llama_context."""

    name = "llamacpp"

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.device = model.device

    def sequence(self) -> LlamaSequence:
        return LlamaSequence(self.model)

    def rows(self, capacity: int = 1) -> LlamaRows:
        return LlamaRows(self.model, capacity)
