"""Prompt-cache files: a prompt's KV cells saved to disk, and loaded on a later run that begins the same way
(llama.cpp's `--prompt-cache` and slot save/restore, MLX-LM's `cache_prompt`).

    llmgen generate --prompt-cache doc.kv "$(cat long-document.txt) Summarise it."
    llmgen chat --prompt-cache system.kv --system "$(cat persona.txt)"
    llmgen serve --prompt-cache-dir ~/.cache/llmgen/prefixes      (the prefix cache, kept across restarts)

A file is safetensors: the cells as tensors (llama.cpp: its state bytes as uint8, one per KV cache; torch:
each layer's keys and values) and, in the metadata, what they belong to:

- `format`: this module's format version;
- `model`: the model's SHA-256 (its GGUF file, or its directory's weights and config), computed once per
  file version and kept in the user cache, keyed by path, size and modification time;
- `engine`: the engine and the settings that shape its cells (llama.cpp: float32 cells and the build's batch
  invariance; torch: the dtype and quantization);
- `tokens`: the token ids the cells hold;
- `sha256`: the digest of the cells' bytes, so that a damaged file is found before llama.cpp reads it.

`load` checks every one of them. A file that belongs to another model, engine or setting is ignored, and
the caller says so in one line; a damaged file (unreadable, or cells that do not agree with their tokens)
raises `PromptCacheError`. Neither is ever used silently. Writes go to a temporary file renamed into place,
so an interrupted write leaves the old file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmgen.errors import LlmgenError, ModelError
from llmgen.loading.engines.base import Cells, SequenceCache
from llmgen.loading.engines.prefix import common_prefix
from llmgen.userdirs import cache_dir

FORMAT = "llmgen-prompt-cache/1"


class PromptCacheError(LlmgenError):
    """A prompt-cache file that cannot be read (damaged, truncated, not one of ours)."""


@dataclass(frozen=True)
class Cached:
    tokens: list[int]
    cells: Cells


def _sha256_files(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def model_digest(path: Path) -> str:
    """The SHA-256 of a model file, or of a model directory's weights and config; remembered per file version."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".gguf") and p.is_file())
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    memo = cache_dir() / "digests" / hashlib.sha256(stamp.encode()).hexdigest()[:24]
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = _sha256_files(files)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    except OSError:
        pass  # NOTE: a read-only cache only costs the hash again next time
    return digest


def engine_settings(loaded: Any) -> str:
    """What shapes the cells besides the model: the engine and its numeric settings."""
    if loaded.engine.name == "llamacpp":
        from llmgen.loading.models import batch_invariance

        return f"llamacpp kv=f32 invariant={batch_invariance('llamacpp')[0]}"
    return f"torch dtype={str(loaded.dtype).removeprefix('torch.')} quant={loaded.quant}"


def _to_tensors(cells: Cells) -> dict[str, torch.Tensor]:
    from llmgen.loading.engines.llamacpp import Cells as LlamaCells
    from llmgen.loading.engines.torch import TorchCells

    if isinstance(cells, LlamaCells):
        return {f"state.{i}": torch.from_numpy(np.ascontiguousarray(p)) for i, p in enumerate(cells.state.payloads)}
    assert isinstance(cells, TorchCells), "cells of a known engine"
    out = {}
    for i, (keys, values) in enumerate(cells.layers):
        out[f"keys.{i}"], out[f"values.{i}"] = keys.contiguous(), values.contiguous()
    return out


def _from_tensors(engine: str, tensors: dict[str, torch.Tensor], length: int) -> Cells:
    if engine == "llamacpp":
        from llmgen.loading.engines.llamacpp import Cells as LlamaCells
        from llmgen.loading.engines.llamacpp_state import CellState

        count = len(tensors)
        return LlamaCells(CellState(tuple(tensors[f"state.{i}"].numpy() for i in range(count))), length)
    from llmgen.loading.engines.torch import TorchCells

    layers = [(tensors[f"keys.{i}"], tensors[f"values.{i}"]) for i in range(len(tensors) // 2)]
    cells = TorchCells(layers)
    if cells.length != length:
        raise PromptCacheError(f"the cells hold {cells.length} positions, the file lists {length} tokens")
    return cells


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save(path: Path, loaded: Any, tokens: Sequence[int], cells: Cells) -> None:
    """Write `cells` (the cells of `tokens`) to `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = _to_tensors(cells)
    meta = {"format": FORMAT, "model": model_digest(loaded.path), "engine": engine_settings(loaded),
            "tokens": json.dumps([int(t) for t in tokens[:cells.length]]), "sha256": _checksum(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, work = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, work, metadata=meta)
        os.replace(work, path)
    finally:
        if os.path.exists(work):
            os.unlink(work)


def load(path: Path, loaded: Any) -> Cached | str:
    """The file's tokens and cells, or why it does not belong to this model and engine (a string)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != FORMAT:
            raise PromptCacheError(f"{path} is not an llmgen prompt cache (format {meta.get('format')!r})")
        if meta.get("model") != model_digest(loaded.path):
            return f"{path} was saved for another model file"
        if meta.get("engine") != engine_settings(loaded):
            return f"{path} was saved with other engine settings ({meta.get('engine')})"
        tokens = [int(t) for t in json.loads(meta["tokens"])]
        tensors = load_file(str(path))
        if _checksum(tensors) != meta.get("sha256"):
            raise PromptCacheError(f"{path} is damaged (its cells do not match their checksum); delete it")
        cells = _from_tensors(loaded.engine.name, tensors, len(tokens))
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise PromptCacheError(f"{path} is damaged ({type(err).__name__}: {err}); delete it") from None
    return Cached(tokens, cells)


def start(path: Path, loaded: Any, ids: Sequence[int], note: Any) -> tuple[SequenceCache, int]:
    """A new sequence holding the longest prefix of `ids` that the file at `path` holds (at most all but the
    last token), and its length. A missing file gives an empty sequence; one of another model or engine too,
    after `note(line)` says why."""
    lm = loaded.engine.sequence()
    if not Path(path).exists():
        return lm, 0
    found = load(Path(path), loaded)
    if isinstance(found, str):
        note(f"{found}; not used, and replaced after this run")
        return lm, 0
    shared = common_prefix(np.asarray(found.tokens, dtype=np.int64), np.asarray(ids, dtype=np.int64))
    n = min(shared, len(ids) - 1, found.cells.length)
    if n > 0:
        try:
            lm.load(found.cells, n)
        except ModelError as err:
            raise PromptCacheError(f"{path} is damaged ({err}); delete it") from None
    return lm, n


def keep(path: Path, loaded: Any, tokens: Sequence[int], lm: SequenceCache) -> None:
    """Save the cells `lm` holds (those of `tokens`' first `lm.length`) to `path`."""
    cells = lm.save()
    if cells is not None:
        save(Path(path), loaded, list(tokens)[:cells.length], cells)


def folder(directory: Path, loaded: Any) -> Path:
    """This model's and engine's folder in a prompt-cache directory (one directory can serve many models)."""
    key = hashlib.sha256(f"{model_digest(loaded.path)}|{engine_settings(loaded)}".encode()).hexdigest()[:16]
    return Path(directory) / f"{Path(loaded.path).stem}-{key}"


def save_dir(directory: Path, loaded: Any, entries: Sequence[tuple[Sequence[int], Cells]]) -> int:
    """Write each (tokens, cells) entry to this model's folder of `directory` as `<digest of its tokens>.kv`;
    how many files were new. Files of entries no longer held are removed (the folder mirrors the prefix cache)."""
    directory = folder(directory, loaded)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for tokens, cells in entries:
        name = hashlib.sha256(json.dumps([int(t) for t in tokens]).encode()).hexdigest()[:24] + ".kv"
        wanted[name] = (tokens, cells)
    written = 0
    for name, (tokens, cells) in wanted.items():
        if not (directory / name).exists():
            save(directory / name, loaded, tokens, cells)
            written += 1
    for stale in directory.glob("*.kv"):
        if stale.name not in wanted:
            stale.unlink(missing_ok=True)
    return written


def load_dir(directory: Path, loaded: Any, note: Any) -> list[Cached]:
    """The entries saved in this model's folder of `directory`, oldest first. Every file is checked as
    `load` checks it: one of another model or engine is not used, a damaged one is skipped, each said in
    one line by `note`."""
    directory = folder(directory, loaded)
    found: list[Cached] = []
    files = sorted(Path(directory).glob("*.kv"), key=lambda p: p.stat().st_mtime) if Path(directory).is_dir() else []
    others = 0
    for path in files:
        try:
            entry = load(path, loaded)
        except PromptCacheError as err:
            note(f"{err}; skipped")
            continue
        if isinstance(entry, str):
            others += 1
        else:
            found.append(entry)
    if others:
        note(f"{others} prompt-cache file(s) in {directory} belong to another model or engine settings; not used")
    return found
