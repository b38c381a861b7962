"""llama.cpp's own logits for a GGUF file, behind the engine interface's `SequenceCache`.

NOTE: a stand-in, kept apart on purpose. llama.cpp's logits for a quantized file differ slightly from
llmgen's torch engine (which dequantizes to float32), so an audit of a llama.cpp server must compute
the exact distribution from llama.cpp's own forward. The llama.cpp engine (`loading/engines/llamacpp.py`,
another branch) replaces this module: `LlamaCppSequence(path)` becomes `loaded.engine.sequence()`.

It drives `llama_decode` through llama-cpp-python's low-level API on the context of a `Llama` object, as
`Llama.eval` does: one sequence (id 0), positions from the cache length, logits requested per token, and
`llama_memory_seq_rm` to roll back.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llmgen.errors import ModelError, UsageError


class LlamaCppSequence:
    """One sequence's KV cache in a llama.cpp context; `forward` returns float32 logits [k or 1, vocab]."""

    def __init__(self, gguf: str | Path, context: int = 2048, threads: int = 1) -> None:
        try:
            import llama_cpp
            from llama_cpp import _logger
        except ModuleNotFoundError:
            raise UsageError("llama.cpp's logits need llama-cpp-python: pip install 'llmgen[llamacpp]'") from None
        _logger.set_verbose(False)
        self.lib = llama_cpp
        # NOTE: the context is made by llama-cpp-python's `Llama`, so that its settings (flash attention off,
        # the rope's yarn values) are the ones its server runs with: llama.cpp's own defaults differ, and move
        # this model's logits by up to 0.5. Only the decoding below is low-level.
        try:
            self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_batch=min(context, 512),
                                       n_threads=threads, n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"llama.cpp cannot load {gguf}: {err}") from None
        self.ctx = self.llm.ctx
        self.vocab_size = self.llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(context, 0, 1)
        self.context = context
        self.batch = llama_cpp.llama_batch_init(context, 0, 1)
        self.length = 0

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> Tensor:
        ids = [int(t) for t in token_ids]
        if self.length + len(ids) > self.context:
            raise ModelError(f"llama.cpp context of {self.context} tokens is full")
        batch = self.batch
        batch.n_tokens = len(ids)
        for i, token in enumerate(ids):
            batch.token[i] = token
            batch.pos[i] = self.length + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(ids) - 1
        if self.lib.llama_decode(self.ctx, batch) != 0:
            raise ModelError("llama_decode failed")
        self.length += len(ids)
        rows = range(len(ids)) if all_logits else [len(ids) - 1]
        out = np.empty((len(rows), self.vocab_size), dtype=np.float32)
        for r, i in enumerate(rows):
            pointer = self.lib.llama_get_logits_ith(self.ctx, i)
            out[r] = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                           shape=(self.vocab_size,))
        return torch.from_numpy(out)  # [k or 1, vocab]

    def rollback(self, length: int) -> None:
        if length < self.length:
            self.lib.llama_memory_seq_rm(self.lib.llama_get_memory(self.ctx), 0, length, -1)
            self.length = length

    def __del__(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.lib.llama_batch_free(self.batch)  # the context and the model are the `Llama` object's to free
