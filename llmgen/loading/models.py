"""Load a model: resolve its reference (`registry.py`), then the engine that runs it.

`load` is the one entry point: the transformers path (`hf.py`), the 4-bit path (`int4.py`) or a GGUF
file run by llama.cpp (`llamacpp.py`), chosen by `--engine` and `--quant`. The names the rest of
llmgen needs from the loading layer are re-exported here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from llmgen.errors import UsageError
from llmgen.loading.gguf_cache import ProgressHook, convert_gguf, gguf_cache_path
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
from llmgen.loading.threads import check_threads, physical_cores
from llmgen.userdirs import cache_dir, config_dir

if TYPE_CHECKING:
    from llmgen.loading.hf import (
        DTYPES,
        check_directory,
        context_length,
        eos_ids,
        load_tokenizer,
        model_info,
        model_path,
        pick_device,
        pick_dtype,
    )
    from llmgen.loading.loaded import LoadedModel, ModelInfo

# NOTE: the names that need torch or transformers are imported on first use (PEP 562), so that
# `llmgen --help`, `models list` and a llama.cpp run import neither of them here.
_LAZY = {"hf": ("DTYPES", "check_directory", "context_length", "eos_ids", "load_tokenizer", "model_info",
                "model_path", "pick_device", "pick_dtype"),
         "loaded": ("LoadedModel", "ModelInfo")}


def __getattr__(name: str) -> Any:
    for module, names in _LAZY.items():
        if name in names:
            import importlib

            value = getattr(importlib.import_module(f"llmgen.loading.{module}"), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ENGINES = ("auto", "torch", "llamacpp")
TORCH_BATCHES = ("torch engine: batched rows run other matmul shapes than a row alone, so they equal HF's "
                 "batched generate() and may part from a row alone at a near-tie")


def batch_invariance(engine: str) -> tuple[bool, str]:
    """Whether `engine` ("torch" or "llamacpp") gives a row the same logits alone and in any batch, and why;
    `--dump-config` and serve's `/v1/models` show it."""
    if engine == "llamacpp":
        from llmgen.loading import llamacpp

        return llamacpp.batch_invariance() if llamacpp.available() else (False, llamacpp.INSTALL)
    return False, TORCH_BATCHES

__all__ = ["DEFAULT_MODEL", "DTYPES", "LoadedModel", "ProgressHook", "Resolved", "RegistryEntry", "cache_dir",
           "config_dir", "convert_gguf", "gguf_cache_path", "is_cached", "load", "pick_device", "pick_dtype",
           "registry", "resolve", "QUANTS", "load_tokenizer", "model_path", "context_length", "eos_ids",
           "check_directory", "BUILTIN", "model_info", "ModelInfo", "ENGINES", "choose_engine",
           "physical_cores", "batch_invariance"]


def choose_engine(engine: str, resolved: Resolved, quant: str = "auto") -> str:
    """The engine that runs `resolved`: "auto" is llama.cpp for a GGUF file (an alias of one included) when
    llama-cpp-python is installed and no --quant asks for a torch path; torch otherwise."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    from llmgen.loading import llamacpp

    return "llamacpp" if resolved.kind == "gguf" and quant == "auto" and llamacpp.available() else "torch"


def load(ref: str, *, device: str = "auto", dtype: str = "auto", offline: bool = False,
         allow_pickle: bool = False, trust_remote_code: bool = False,
         progress: ProgressHook | None = None, quant: str = "auto", engine: str = "torch",
         threads: int | None = None) -> LoadedModel:
    """Resolve `ref` and load its tokenizer and model, ready for inference.

    `quant`: "none" (the float path through transformers), "int4" (`llmgen.loading.quant`), or "auto" (the
    alias's own setting, else "none").
    `engine`: "torch" (transformers' forward, or the int4 Llama), "llamacpp" (a GGUF file run by llama.cpp, as it
    is: `loading/llamacpp.py`), or "auto" (`choose_engine`). The library's default is torch; the CLI's is auto.
    `threads`: a forward's threads (torch's intra-op threads, which also run the processors on the llama.cpp
    engine; llama.cpp's n_threads); None: torch's setting as it is, and the physical cores for llama.cpp.
    """
    started = time.perf_counter()
    check_threads(threads)
    if threads is not None:  # torch runs the processors on either engine, and the forward on its own
        import torch

        torch.set_num_threads(threads)
    resolved = resolve(ref)
    if choose_engine(engine, resolved, quant) == "llamacpp":
        from llmgen.loading.llamacpp import load_llamacpp

        if device not in ("auto", "cpu"):
            raise UsageError(f"--engine llamacpp runs on the CPU here; drop --device {device}")
        return load_llamacpp(resolved, threads=threads or physical_cores(), started=started, quant=quant)
    quant = (resolved.quant or "none") if quant == "auto" else quant
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if quant == "int4":
        from llmgen.loading.int4 import load_int4

        return load_int4(resolved, device=device, offline=offline, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, progress=progress, started=started)
    from llmgen.loading.hf import load_float

    return load_float(resolved, device=device, dtype=dtype, offline=offline, allow_pickle=allow_pickle,
                      trust_remote_code=trust_remote_code, progress=progress, started=started)
