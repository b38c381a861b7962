"""The 4-bit loader (`--quant int4`): a GGUF file or a checkpoint to packed int4 weights, to a lean Llama.

The kernels and the packing are in `quant/` (its `__init__` lists the files). A loaded int4 model runs on
the torch engine (`engines/torch.py`) like any transformers model; decoding does not know it is quantized.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llmgen.errors import ModelError
from llmgen.loading import hf
from llmgen.loading.gguf_cache import ProgressHook, gguf_cache_path
from llmgen.loading.hfutil import first_line
from llmgen.loading.loaded import LoadedModel
from llmgen.loading.quant import cache, pack
from llmgen.loading.quant.linear import int4_kernels_available
from llmgen.loading.quant.llama import Shape, unsupported
from llmgen.loading.registry import Resolved

__all__ = ["load_int4"]


def _gguf_directory(resolved: Resolved, offline: bool, progress: ProgressHook | None) -> Path:
    """The converted directory of a GGUF file, for its config and tokenizer. The int4 path reads neither
    its float weights nor their checksums (which cost ~0.4 s a load), so a finished conversion is used
    as it is; only a missing one is made."""
    directory = gguf_cache_path(Path(resolved.location))
    if (directory / "config.json").is_file() and (directory / "tokenizer_config.json").is_file():
        return directory
    return hf.model_path(resolved, offline, progress)


def load_int4(resolved: Resolved, *, device: str, offline: bool, allow_pickle: bool, trust_remote_code: bool,
              progress: ProgressHook | None, started: float | None = None) -> Any:
    """Load `resolved` (a `registry.Resolved`) for the int4 path; a `LoadedModel`."""
    started = time.perf_counter() if started is None else started
    ref = resolved.ref
    if not int4_kernels_available():
        raise ModelError(f"--quant int4: torch {torch.__version__} has no CPU int4 kernels (torch >= 2.6 has them)")
    dev = hf.pick_device(device)
    if dev.type != "cpu":
        raise ModelError(f"--quant int4 runs on the CPU only (no {dev.type} kernel is wired up); "
                         "use --device cpu, or --quant none")
    is_gguf = resolved.kind == "gguf"
    path = _gguf_directory(resolved, offline, progress) if is_gguf else hf.model_path(resolved, offline, progress)
    hf.check_directory(path, allow_pickle, trust_remote_code)
    config, generation_config = hf.read_configs(ref, path, trust_remote_code)
    why = unsupported(config)
    if why is None:
        shape = Shape.from_config(config)
        if shape.hidden % 32 or shape.intermediate % 32:
            why = f"hidden size {shape.hidden} and MLP size {shape.intermediate} must be multiples of 32"
    if why:
        raise ModelError(f"--quant int4: no int4 path for {ref!r}: {why}; use --quant none")
    if is_gguf:
        gguf = Path(resolved.location)
        target = cache.gguf_int4_path(gguf)

        def build() -> Any:
            return pack.from_gguf(gguf, shape)
    else:
        target = cache.dir_cache_path(path)

        def build() -> Any:
            return pack.from_checkpoint(path, shape)
    _return_freed_memory()
    try:
        packed = cache.load_or_build(target, path / "config.json", build, progress)
        with _one_thread():
            model = pack.build(packed, config, generation_config)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ModelError(f"--quant int4: cannot pack {ref!r}: {first_line(err)}") from None
    del packed  # closes the cache file
    tokenizer = hf.load_tokenizer(ref, path, trust_remote_code)
    return LoadedModel(ref=ref, model=model, tokenizer=tokenizer, device=dev, dtype=torch.bfloat16,
                              context_length=hf.context_length(config),
                              eos_token_ids=hf.eos_ids(model, tokenizer),
                              load_seconds=time.perf_counter() - started, path=path, quant="int4")


def _return_freed_memory() -> None:
    """NOTE: glibc raises its mmap threshold after the first large free, after which the many
    megabyte-sized temporaries of packing come from the heap and stay there as holes: about 200 MB of
    peak RSS for the embedded model. A fixed threshold (glibc's own default, 128 KiB) hands each one
    back to the system when freed. It costs a few mmap calls per decode step (the logits), well under
    1% of a step. Nothing is done where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """NOTE: the kernel's weight packing is parallel, and on a busy 2-core machine its threads wait on each
    other for seconds (a 0.2 s build measured 2-7 s under load); on one thread it is 0.2-0.3 s, always."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
