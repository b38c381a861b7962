"""The llama.cpp engine: `llama_decode` through llama-cpp-python's low-level API, under llmgen's decoding.

Only the model forward and the KV cache are llama.cpp's. Every processor, the pick, the verifier,
constraints, logprobs, beams and batching stay llmgen's code: this module hands back float32 logits and
nothing else (no llama.cpp sampler is ever built).

One `llama_context` per cache. A context owns a KV cache of `n_ctx` cells; a cell holds one token's
keys and values and is tagged with the sequence ids (`seq_id`) that see it:

    sequence() -> LlamaSequence: one context, seq_id 0, positions 0..length-1.
        forward(ids)       one llama_decode of len(ids) tokens at the next positions; logits for the
                           last one, or for every one with all_logits (the speculative verify: γ+1 rows
                           from one llama_decode)
        rollback(n)        llama_memory_seq_rm(0, n, -1): forget positions n and later

    rows() -> LlamaRows: one context, one seq_id per row, all rows in one unified KV cache:
        add(prompts)       each prompt under a fresh seq_id, at positions 0..len-1, in as few
                           llama_decode calls as n_batch allows; the logits at each prompt's last token
        step(tokens)       one llama_decode with one token per row (row r at position lengths[r])
        select(indices)    a kept row keeps its seq_id; a repeated row gets a new seq_id that shares the
                           parent's cells (llama_memory_seq_cp: no copy of keys or values); a dropped
                           row's cells are freed (llama_memory_seq_rm)

NOTE: logits are copied out of llama.cpp's output buffer (one memcpy of [k, vocab] float32 per forward,
0.05 ms for a 49k vocabulary, under 0.5% of a step): the next llama_decode on the context overwrites
that buffer, and may reallocate it, while decoding code can still hold the tensor of the step before.
The view itself is made without a copy (`torch.frombuffer` over the pointer); only the clone copies.

NOTE: the KV cache is float32, not llama.cpp's default f16. With an f16 cache llama.cpp's logits depend
on the shape of the batch: on the SmolLM2 Q4_1 file, a 3-token verify batch moved logits by up to 1.0
(out of ~27) against the same tokens decoded one at a time, and a 16-token prefill by 1.7, enough to
flip greedy picks and to move logprobs by ~1e-2. With a float32 cache the same comparisons are equal
bit for bit, so that speculative decoding, batched rows and the chat's reused prefix give exactly the
logits of plain decoding. It costs twice the KV memory (contexts start at 512 cells and grow) and no
measurable speed at these sizes (SmolLM2, 1 thread, 64 tokens: 33.9-44.6 tok/s f32, 34.7-45.2 f16).
The other settings that touch numerics are `llama_cpp.Llama`'s defaults (flash attention off,
n_batch = n_ubatch = 512, `swa_full` on so that a rollback inside a sliding window stays exact), so that
greedy decoding here gives llama.cpp's own tokens for the same cache type.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llmgen.errors import ModelError, PromptError

N_BATCH = 512  # tokens per llama_decode call (llama_cpp.Llama's default)
MAX_ROWS = 256  # seq_ids per rows context (llama.h: LLAMA_MAX_SEQ)
MAX_ROWS_CELLS = 65536  # tokens over all rows of one rows context
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
        self.device = torch.device("cpu")

    def close(self) -> None:
        if self.pointer is not None:
            self.lib.llama_model_free(self.pointer)
            self.pointer = None

    def __del__(self) -> None:
        self.close()


class _Context:
    """One llama_context and its batch: decode (tokens, positions, seq_ids) and copy out the logits asked for."""

    def __init__(self, model: LlamaCppModel, n_ctx: int, n_seq: int) -> None:
        lib = model.lib
        self.lib, self.model = lib, model
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = N_BATCH
        params.n_ubatch = N_BATCH
        params.n_seq_max = n_seq
        params.kv_unified = True  # rows share one cache, so seq_cp shares cells instead of copying them
        params.n_threads = params.n_threads_batch = model.threads
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama_cpp.Llama's default
        params.type_k = params.type_v = GGML_TYPE_F32  # batch-invariant logits (the module's second NOTE)
        params.no_perf = True
        self.pointer = lib.llama_init_from_model(model.pointer, params)
        if self.pointer is None:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {model.path}")
        self.n_ctx = int(lib.llama_n_ctx(self.pointer))
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
        """Decode the tokens (in chunks of N_BATCH); float32 logits [sum(wanted), vocab] in token order."""
        out = []
        for start in range(0, len(tokens), N_BATCH):
            end = min(start + N_BATCH, len(tokens))
            batch = self.batch
            for j, i in enumerate(range(start, end)):
                batch.token[j] = tokens[i]
                batch.pos[j] = positions[i]
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq_ids[i]
                batch.logits[j] = wanted[i]
            batch.n_tokens = end - start
            code = self.lib.llama_decode(self.pointer, batch)
            if code != 0:
                raise _decode_error(code, self.n_ctx)
            count = sum(1 for i in range(start, end) if wanted[i])
            if count:
                out.append(self._logits(count))
        if not out:
            return torch.empty((0, self.vocab_size), dtype=torch.float32)
        return out[0] if len(out) == 1 else torch.cat(out)

    def _logits(self, count: int) -> Tensor:
        """The `count` output rows of the last decode, copied (see the module's NOTE)."""
        pointer = self.lib.llama_get_logits(self.pointer)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        buffer = (ctypes.c_float * (count * self.vocab_size)).from_address(address)
        view = torch.frombuffer(buffer, dtype=torch.float32).view(count, self.vocab_size)  # no copy
        return view.clone()  # [count, vocab]

    def grown(self, n_ctx: int, seq_ids: Sequence[int]) -> _Context:
        """A larger context holding the same sequences: each one's KV state copied bit for bit
        (llama_state_seq_get_data / set_data), so that growing never changes a logit. Closes this one."""
        bigger = _Context(self.model, n_ctx, self.n_seq)
        for seq in seq_ids:
            size = self.lib.llama_state_seq_get_size(self.pointer, seq)
            state = (ctypes.c_uint8 * size)()
            written = self.lib.llama_state_seq_get_data(self.pointer, state, size, seq)
            if not written or not self.lib.llama_state_seq_set_data(bigger.pointer, state, written, seq):
                bigger.close()
                raise ModelError(f"llama.cpp: cannot move sequence {seq} to a context of {n_ctx} tokens")
        self.close()
        return bigger

    def remove(self, seq_id: int, start: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq_id, start, -1)

    def copy(self, source: int, target: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)


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
            self.context = self.context.grown(cells(need, self.context.n_ctx, self.model.context_length), [0])
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


class LlamaRows:
    """Many rows in one llama.cpp context, one seq_id each (`engines.base.RowsCache`)."""

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.device = model.device
        self.context: _Context | None = None  # made on the first add
        self.seqs: list[int] = []  # row r is seq_id seqs[r]
        self.lengths: list[int] = []  # tokens per row: the next position of row r
        self.free = list(range(MAX_ROWS - 1, -1, -1))  # unused seq_ids, popped from the end

    @property
    def rows(self) -> int:
        return len(self.seqs)

    def _ctx(self) -> _Context:
        if self.context is None:
            self.context = _Context(self.model, cells(1, 0, MAX_ROWS_CELLS), MAX_ROWS)
        return self.context

    def _decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], wanted: list[bool]) -> Tensor:
        """Decode into the shared cache, first moving the rows to a larger context when the cells held
        (counted per row, so shared prompt cells count once per row: an upper bound) and the new
        tokens may not fit."""
        need = sum(self.lengths) + len(tokens)
        context = self._ctx()
        if need > MAX_ROWS_CELLS:
            raise PromptError(f"the llama.cpp engine holds at most {MAX_ROWS_CELLS} tokens over all rows; "
                              "use a smaller --batch-size or -n")
        if need > context.n_ctx:
            self.context = context = context.grown(cells(need, context.n_ctx, MAX_ROWS_CELLS), self.seqs)
        return context.decode(tokens, positions, seq_ids, wanted)

    def _take(self) -> int:
        if not self.free:
            raise ModelError(f"the llama.cpp engine decodes at most {MAX_ROWS} rows at once")
        return self.free.pop()

    @torch.inference_mode()
    def add(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        """Prefill `prompts` as new rows after the existing ones; their logits [len(prompts), vocab]."""
        tokens: list[int] = []
        positions: list[int] = []
        seq_ids: list[int] = []
        wanted: list[bool] = []
        new = []
        for prompt in prompts:
            seq = self._take()
            new.append((seq, len(prompt)))
            tokens += [int(t) for t in prompt]
            positions += range(len(prompt))
            seq_ids += [seq] * len(prompt)
            wanted += [False] * (len(prompt) - 1) + [True]
        try:
            logits = self._decode(tokens, positions, seq_ids, wanted)  # [k, vocab]
        except Exception:
            for seq, _ in new:
                self._ctx().remove(seq)
                self.free.append(seq)
            raise
        for seq, length in new:
            self.seqs.append(seq)
            self.lengths.append(length)
        return logits

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (`tokens` [rows]); the next-token logits [rows, vocab]."""
        ids = [int(t) for t in tokens.tolist()]
        logits = self._decode(ids, self.lengths, self.seqs, [True] * len(ids))  # [rows, vocab]
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def select(self, indices: Sequence[int]) -> None:
        """Keep the rows `indices`, in that order; a repeated index is a copy of that row."""
        seqs, lengths, used = [], [], set()
        for i in indices:
            if i in used:  # a copy: a fresh seq_id that sees the parent's cells
                seq = self._take()
                self._ctx().copy(self.seqs[i], seq)
            else:
                seq = self.seqs[i]
                used.add(i)
            seqs.append(seq)
            lengths.append(self.lengths[i])
        for i, seq in enumerate(self.seqs):
            if i not in used:
                self._ctx().remove(seq)
                self.free.append(seq)
        self.seqs, self.lengths = seqs, lengths


class LlamaCppEngine:
    """The engine interface over a llama.cpp model: each cache is its own llama_context."""

    name = "llamacpp"

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.device = model.device

    def sequence(self) -> LlamaSequence:
        return LlamaSequence(self.model)

    def rows(self) -> LlamaRows:
        return LlamaRows(self.model)
