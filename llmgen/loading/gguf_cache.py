"""The safetensors cache of GGUF files: each GGUF file is dequantized to float32 once, saved as
safetensors + tokenizer files under `<cache dir>/gguf/<name>-<key>`, and loaded from there after.

The key hashes the file's path, size and modification time, so a changed file gets a new conversion.
The conversion is checked (`gguf_check`) before it is read, written beside its target and renamed into
place, serialised between processes by a lock, and its weights are listed with their checksums, which
are verified on every load (`convert_gguf`).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from llmgen.errors import ModelError
from llmgen.loading import gguf_check
from llmgen.loading.hfutil import first_line, quiet, warn
from llmgen.userdirs import cache_dir

# A progress hook: given a description, returns a context manager shown while the work runs.
ProgressHook = Callable[[str], AbstractContextManager[Any]]


def gguf_cache_path(gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` lives; the key changes when the file does."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


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
            warn(f"the cached conversion of {gguf.name} is corrupt ({problem}); rebuilding it")
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any  # transformers' PreTrainedModel: its quantization markers are cleared below
    with quiet():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         dtype=torch.float32)
        except (ValueError, OSError, RuntimeError, KeyError, EOFError, TypeError) as err:
            raise ModelError(f"cannot read GGUF file {gguf}: {first_line(err)}") from None
    # A GGUF-loaded model refuses save_pretrained until its quantization marker is cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _save(model: Any, tokenizer: Any, directory: Path) -> None:
    with quiet():
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
    warn(f"cannot write the model cache in {cache} ({error.strerror or error}); converting {gguf.name} "
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


@contextlib.contextmanager
def _null_progress(_: str) -> Iterator[None]:
    yield
