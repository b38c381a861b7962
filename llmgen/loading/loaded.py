"""A loaded model: its engine, tokenizer and the facts decoding needs (context, end-of-sequence ids)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from llmgen.loading.engines.base import Engine
from llmgen.loading.engines.torch import TorchEngine
from llmgen.loading.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """What decoding reads of a model besides its engine: the tokenizer and what its stop rules need.

    Every `LoadedModel` has one (`.info`); a run whose weights live elsewhere (`--backend vllm`) loads
    only this (`hf.model_info`)."""

    tokenizer: Tokenizer  # loading/tokenizer.py: a transformers tokenizer or GGUFTokenizer
    eos_token_ids: frozenset[int]
    context_length: int
    ref: str = ""
    path: Path | None = None
    device: torch.device = torch.device("cpu")  # where each row's random generator lives


@dataclass
class LoadedModel:
    ref: str
    model: Any  # a transformers PreTrainedModel (torch engine); None on the llama.cpp engine
    tokenizer: Tokenizer  # loading/tokenizer.py: a transformers tokenizer or GGUFTokenizer
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_token_ids: frozenset[int]
    load_seconds: float
    path: Path
    quant: str = "none"  # "none", "int4" (torch engine), or "gguf" (llama.cpp runs the file's own quantization)
    # NOTE: None given means the torch engine over `model` (set in __post_init__), so it is never None after.
    engine: Engine = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = TorchEngine(self.model)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.tokenizer, self.eos_token_ids, self.context_length, self.ref, self.path, self.device)

    @property
    def vocab_size(self) -> int:
        if self.model is None:  # the llama.cpp engine
            return int(cast(Any, self.engine).model.vocab_size)  # llama_cpp's Llama
        if self.quant != "none":
            return int(self.model.vocab_size)
        return int(self.model.get_output_embeddings().weight.shape[0])


