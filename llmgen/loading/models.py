"""Resolve a model reference to a tokenizer and a model.

A reference is, in the order tried:
1. an alias from the registry (built-in ones below, then the user's `models.toml` in the config dir);
2. a local directory in Hugging Face format (config.json, *.safetensors, tokenizer files);
3. a `.gguf` file, dequantized once and cached as safetensors under the cache dir (`gguf_cache`);
4. a Hugging Face hub id, from the local HF cache; downloaded only when online and not offline.

Only safetensors weights are loaded unless `allow_pickle`; configs that need remote code are refused
unless `trust_remote_code`.
"""

from __future__ import annotations

import time

from llmgen.errors import UsageError
from llmgen.loading.gguf_cache import ProgressHook, convert_gguf, gguf_cache_path
from llmgen.loading.hf import (
    DTYPES,
    check_directory,
    context_length,
    eos_ids,
    load_float,
    load_tokenizer,
    model_info,
    model_path,
    pick_device,
    pick_dtype,
)
from llmgen.loading.int4 import load_int4
from llmgen.loading.loaded import LoadedModel, ModelInfo
from llmgen.loading.registry import (
    BUILTIN,
    DEFAULT_MODEL,
    QUANTS,
    RegistryEntry,
    Resolved,
    is_cached,
    registry,
    resolve,
)
from llmgen.userdirs import cache_dir, config_dir

__all__ = ["DEFAULT_MODEL", "DTYPES", "LoadedModel", "ProgressHook", "Resolved", "RegistryEntry", "cache_dir",
           "config_dir", "convert_gguf", "gguf_cache_path", "is_cached", "load", "pick_device", "pick_dtype",
           "registry", "resolve", "QUANTS", "load_tokenizer", "model_path", "context_length", "eos_ids",
           "check_directory", "BUILTIN", "model_info", "ModelInfo"]

def load(ref: str, *, device: str = "auto", dtype: str = "auto", offline: bool = False,
         allow_pickle: bool = False, trust_remote_code: bool = False,
         progress: ProgressHook | None = None, quant: str = "auto") -> LoadedModel:
    """Resolve `ref` and load its tokenizer and model, ready for inference.

    `quant`: "none" (the float path through transformers), "int4" (`llmgen.loading.quant`), or "auto" (the
    alias's own setting, else "none").
    """
    started = time.perf_counter()
    resolved = resolve(ref)
    quant = (resolved.quant or "none") if quant == "auto" else quant
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if quant == "int4":
        return load_int4(resolved, device=device, offline=offline, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, progress=progress, started=started)
    return load_float(resolved, device=device, dtype=dtype, offline=offline, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, progress=progress, started=started)
