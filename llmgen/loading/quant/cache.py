"""The packed int4 cache: `Packed.tensors` saved once as safetensors, beside the GGUF conversion.

    <cache>/gguf/<name>-<key>/int4/          for a GGUF file (next to its float32 conversion)
    <cache>/int4/<name>-<key>/               for a transformers directory (key: its files' sizes and times)

Each holds `weights.safetensors`, a copy of `config.json` and `SHA256SUMS`, and is written the way the
GGUF cache is (`gguf_cache`): into a temporary directory beside the target, then renamed into place,
under the same per-conversion lock; checksums are verified on every load, and a corrupt cache is
reported on stderr and rebuilt. The kernel's own packed layout is not stored (it is made at load time
in well under a second), so the cache does not depend on the CPU it was written on.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmgen.loading import gguf_cache
from llmgen.loading.gguf_cache import ProgressHook
from llmgen.loading.hfutil import warn
from llmgen.loading.quant.pack import Packed
from llmgen.userdirs import cache_dir

WEIGHTS = "weights.safetensors"
FORMAT = "1"  # bump when the packed layout changes; old caches are then rebuilt


def dir_cache_path(directory: Path) -> Path:
    """Where the int4 pack of a transformers model directory lives; the key changes with its files."""
    parts = [str(directory.resolve()), FORMAT]
    for file in sorted(directory.glob("*.safetensors")) + [directory / "config.json"]:
        st = file.stat()
        parts.append(f"{file.name}|{st.st_size}|{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "int4" / f"{directory.name}-{key}"


def gguf_int4_path(gguf: Path) -> Path:
    return gguf_cache.gguf_cache_path(gguf) / f"int4-v{FORMAT}"


def load_or_build(target: Path, config_json: Path, build: Callable[[], Packed],
                  progress: ProgressHook | None = None) -> Packed:
    """The packed weights cached at `target`, built (and cached) first when absent or corrupt."""
    packed = _read(target)
    if packed is not None:
        return packed
    with gguf_cache._conversion_lock(target):
        packed = _read(target, report=True)
        if packed is not None:
            return packed
        with (progress or gguf_cache._null_progress)("Packing the weights to int4 (once)"):
            packed = build()
        for note in packed.notes:
            warn(f"--quant int4: {note}")
        try:
            _write(packed, target, config_json)
        except OSError as err:
            warn(f"cannot write the int4 cache in {target.parent} ({err.strerror or err}); "
                 "it will be packed again next time")
    return packed


class LazyTensors(dict):
    """The cached tensors, each read from the file when first asked for (and not kept): building the
    model layer by layer then never holds the whole file in memory beside the model."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        super().__init__()
        self._handle = safe_open(str(path), framework="pt")
        self._names = set(self._handle.keys())

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return self._handle.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def _read(target: Path, report: bool = False) -> Packed | None:
    problem = gguf_cache._cache_problem(target)
    if problem is None:
        try:
            return Packed(LazyTensors(target / WEIGHTS))
        except (OSError, ValueError, RuntimeError) as err:  # NOTE: safetensors raises its own errors too
            problem = f"{WEIGHTS} cannot be read ({err})"
    if report and problem != "absent":
        warn(f"the int4 cache {target} is corrupt ({problem}); rebuilding it")
    return None


def _write(packed: Packed, target: Path, config_json: Path) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file({k: v.contiguous() for k, v in packed.tensors.items()}, str(work / WEIGHTS))
        shutil.copyfile(config_json, work / "config.json")
        gguf_cache._write_checksums(work)
        gguf_cache._move_into_place(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
