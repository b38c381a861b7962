"""A loaded model: its engine, tokenizer and the facts decoding needs (context, end-of-sequence ids)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmgen.loading.engines.base import Engine


@dataclass
class LoadedModel:
    ref: str
    model: Any  # a transformers PreTrainedModel (torch engine); None on the llama.cpp engine
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_token_ids: frozenset[int]
    load_seconds: float
    path: Path
    quant: str = "none"  # "none", "int4" (torch engine), or "gguf" (llama.cpp runs the file's own quantization)
    engine: Engine = None  # type: ignore[assignment]  # set by the loader

    @property
    def vocab_size(self) -> int:
        if self.model is None:  # the llama.cpp engine
            return int(self.engine.model.vocab_size)
        if self.quant != "none":
            return int(self.model.vocab_size)
        return int(self.model.get_output_embeddings().weight.shape[0])


