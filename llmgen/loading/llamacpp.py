"""Loading a GGUF file for the llama.cpp engine (`--engine llamacpp`): memory-mapped as it is, no float copy.

The file's header is checked by `gguf_check` first (bounded reads: a hostile header never reaches
llama.cpp), then `llama_model_load_from_file` maps it. The tokenizer and the chat template are the
file's own (`gguf_tokenizer.GGUFTokenizer`), so nothing here imports transformers.

llama.cpp logs through a callback: a no-op one (that keeps the last error lines, for the one-line
message a failed load gets) unless `LLMGEN_LLAMACPP_LOG=1` asks for llama.cpp's own log on stderr.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from llmgen.errors import ModelError, UsageError
from llmgen.loading import gguf_check
from llmgen.loading.engines.llamacpp import LlamaCppEngine, LlamaCppModel
from llmgen.loading.gguf_tokenizer import GGUFTokenizer
from llmgen.loading.loaded import LoadedModel
from llmgen.loading.registry import Resolved

INSTALL = "pip install 'llmgen[llamacpp]' (llama-cpp-python; it builds llama.cpp from source, ~5 min)"
MAX_CONTEXT = 8192  # KV cells per context: the model's own context, at most this (f16 KV: ~18-23 KB a token)

_errors: deque[str] = deque(maxlen=4)  # the last error lines llama.cpp logged
_callback: Any = None  # the ctypes callback must outlive every call into llama.cpp
_initialized = False


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _init() -> Any:
    """Import llama_cpp, route its log to our callback, initialise the backend once."""
    global _callback, _initialized
    if not available():
        raise UsageError(f"--engine llamacpp needs llama.cpp: {INSTALL}")
    import llama_cpp

    if _initialized:
        return llama_cpp
    verbose = os.environ.get("LLMGEN_LLAMACPP_LOG", "") not in ("", "0")
    # NOTE: ggml's tiled K-quant matmul runs for 8 or more rows and vec_dot below, in another summation order:
    # off, so that a row's logits do not depend on how many rows one llama_decode carries (docs/engines.md).
    # ggml reads it once, at the first matmul of the process.
    os.environ[TILED] = "0"

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, user_data: Any) -> None:
        message = text.decode("utf-8", errors="replace")
        if verbose:
            sys.stderr.write(message)
        elif level == 4 and message.strip():  # GGML_LOG_LEVEL_ERROR (ggml.h: none, debug, info, warn, error, cont)
            _errors.append(message.strip())

    _callback = log
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _initialized = True
    return llama_cpp


def load_model(path: Path, threads: int) -> LlamaCppModel:
    """Map `path` with llama.cpp; a ModelError in one line when llama.cpp cannot load it."""
    gguf_check.check(path)
    lib = _init()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    # NOTE: no extra buffer types: llama.cpp would repack the weights for its CPU kernels (REPACK, AMX), whose
    # one-token and many-token paths sum in different orders (docs/engines.md); AMX also crashes in some VMs.
    params.use_extra_bufts = False
    _errors.clear()
    pointer = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if pointer is None:
        reasons = [line.split("error loading model: ", 1)[1] for line in _errors if "error loading model: " in line]
        why = reasons[0] if reasons else (_errors[0] if _errors else "llama.cpp could not load it")
        raise ModelError(f"cannot load {path} with llama.cpp: {why}")
    trained = int(lib.llama_model_n_ctx_train(pointer))
    context = min(trained, MAX_CONTEXT) if trained > 0 else MAX_CONTEXT
    return LlamaCppModel(pointer, str(path), threads, context)


def system_info() -> str:
    """llama.cpp's `llama_print_system_info()`: what the installed build compiled in."""
    return _init().llama_print_system_info().decode("utf-8", errors="replace")


TILED = "GGML_CPU_TILED_MM"


def batch_invariance(info: str | None = None) -> tuple[bool, str]:
    """Whether this build of llama.cpp gives a row the same logits alone and in any batch, and why.

    llamafile's sgemm (`LLAMAFILE = 1`) runs a matmul of 2+ tokens in another summation order than the
    one-token path, so a verify, a prefill or a batch of rows moves a logit's last bits; only a rebuild
    removes it. The engine turns off at run time everything else that depends on the batch: the weight
    repacking (no extra buffer types), ggml's tiled K-quant matmul (GGML_CPU_TILED_MM=0), and a KV cache
    shared by the rows (one stream each) (docs/engines.md)."""
    info = system_info() if info is None else info
    if "LLAMAFILE = 1" in info:
        return False, ("llama-cpp-python was built with llamafile's sgemm, which sums 2+ tokens in another order "
                       f"than one; rebuild it without: {REBUILD}")
    return True, ("one KV stream per row, no llamafile sgemm, no tiled K-quant matmul, no weight repacking, "
                  "float32 KV cache")


REBUILD = ("CMAKE_ARGS=\"-DGGML_LLAMAFILE=OFF\" pip install --force-reinstall --no-cache-dir --no-deps "
           "llama-cpp-python (or: make llamacpp)")


def eos_ids(tokenizer: GGUFTokenizer) -> frozenset[int]:
    """End of generation: the file's EOS and EOT tokens (Gemma's <eos> and <end_of_turn>), as llama.cpp's is_eog."""
    lib, vocab = tokenizer.lib, tokenizer.vocab
    ids = {int(lib.llama_vocab_eos(vocab)), int(lib.llama_vocab_eot(vocab))}
    return frozenset(i for i in ids if i >= 0 and lib.llama_vocab_is_eog(vocab, i))


def load_llamacpp(resolved: Resolved, *, threads: int, started: float, quant: str = "none") -> LoadedModel:
    """A `LoadedModel` on the llama.cpp engine for a resolved GGUF reference."""
    if resolved.kind != "gguf":
        raise UsageError(f"--engine llamacpp runs GGUF files; {resolved.ref!r} is a {_kinds[resolved.kind]} "
                         "(use --engine torch)")
    if quant == "int4":
        raise UsageError("--quant int4 is the torch engine's 4-bit path; on --engine llamacpp the GGUF file's own "
                         "quantization runs (drop --quant, or use --engine torch)")
    path = Path(resolved.location)
    model = load_model(path, threads)
    tokenizer = GGUFTokenizer(model)
    return LoadedModel(ref=resolved.ref, model=None, engine=LlamaCppEngine(model), tokenizer=tokenizer,
                       device=torch.device("cpu"), dtype=torch.float32, context_length=model.context_length,
                       eos_token_ids=eos_ids(tokenizer), load_seconds=time.perf_counter() - started, path=path,
                       quant="gguf")


_kinds = {"dir": "model directory", "hub": "hub id", "gguf": "GGUF file"}
