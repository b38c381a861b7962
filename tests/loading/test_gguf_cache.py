"""The safetensors cache of GGUF conversions under faults: a run killed mid-conversion, runs converting
at once, a cache file corrupted on disk, a read-only or full cache, SIGINT/SIGTERM mid-conversion.

transformers' GGUF reader is replaced by a stand-in that returns the tiny char model (the pattern of
tests/test_models.py), so a "conversion" takes well under a second and can be slowed down or broken
at will; everything after it (save, checksums, rename, lock, load) is the real code. Subprocess tests
run the real `llmgen generate` with the stand-in installed by a small driver script.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmgen.cli import main
from llmgen.loading import gguf_cache, models

ROOT = Path(__file__).resolve().parents[2]


def write_gguf(path: Path) -> Path:
    """A valid GGUF header (the check passes); its content is ignored by the stand-in loader."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class StandIn:
    """Replaces the GGUF reading: returns the char model; `on_save(directory)` runs before saving."""

    def __init__(self, source: Path) -> None:
        self.source, self.calls, self.on_save = source, 0, None
        self.lock = threading.Lock()

    def model(self):
        with self.lock:
            self.calls += 1
        model = REAL_MODEL(self.source)
        save, hook = model.save_pretrained, self.on_save
        if hook is not None:
            def hooked(directory, *args, **kwargs):
                hook(Path(directory))
                return save(directory, *args, **kwargs)
            model.save_pretrained = hooked
        return model

    def tokenizer(self):
        return REAL_TOKENIZER(self.source)


def _real(name: str):
    import transformers

    return getattr(transformers, name).from_pretrained


REAL_MODEL, REAL_TOKENIZER = _real("AutoModelForCausalLM"), _real("AutoTokenizer")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(path))
    return path


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch, char_model: Path, cache: Path) -> tuple[Path, StandIn]:
    import transformers

    gguf = write_gguf(tmp_path / "tiny.gguf")
    loader = StandIn(char_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(
        lambda cls, *a, **k: loader.model() if "gguf_file" in k else REAL_MODEL(*a, **k)))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(
        lambda cls, *a, **k: loader.tokenizer() if "gguf_file" in k else REAL_TOKENIZER(*a, **k)))
    return gguf, loader


def leftovers(target: Path) -> list[str]:
    """Temporary directories of conversions beside the target."""
    if not target.parent.exists():
        return []
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith("."))


def greedy(loaded: models.LoadedModel) -> list[int]:
    from llmgen.decoding.config import DecodingConfig
    from llmgen.decoding.plain import plain_tokens
    from llmgen.decoding.sampling import make_generator
    from llmgen.loading.engines.torch import CachedLM

    tokens = (t.id for t in plain_tokens(CachedLM(loaded.model), [3, 4, 5], DecodingConfig(temperature=0), make_generator(0)))
    return [next(tokens) for _ in range(8)]


# --- checksums -----------------------------------------------------------------------------------

def test_a_conversion_writes_checksums_that_sha256sum_accepts(stand_in) -> None:
    gguf, _ = stand_in
    target = models.convert_gguf(gguf)
    sums = (target / gguf_cache.CHECKSUMS).read_text()
    assert sums.endswith("  model.safetensors\n") and len(sums.split()[0]) == 64
    done = subprocess.run(["sha256sum", "-c", gguf_cache.CHECKSUMS], cwd=target, capture_output=True, text=True)
    assert done.returncode == 0 and "model.safetensors: OK" in done.stdout


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped bytes": (lambda t: flip_bytes(t / "model.safetensors"), "does not match its checksum"),
    "truncated": (lambda t: (t / "model.safetensors").write_bytes((t / "model.safetensors").read_bytes()[:100]),
                  "does not match its checksum"),
    "weights deleted": (lambda t: (t / "model.safetensors").unlink(), "model.safetensors is missing"),
    "checksums garbled": (lambda t: (t / gguf_cache.CHECKSUMS).write_text("nonsense\n"), "malformed"),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_a_corrupted_cache_is_detected_and_rebuilt_with_a_warning(stand_in, capsys, corrupt: str) -> None:
    gguf, loader = stand_in
    expected = greedy(models.load(str(gguf)))
    target = models.gguf_cache_path(gguf)
    damage, why = CORRUPTIONS[corrupt]
    damage(target)
    capsys.readouterr()
    rebuilt = models.load(str(gguf))
    err = capsys.readouterr().err
    assert loader.calls == 2
    assert err.count("\n") == 1 and err.startswith("llmgen: warning: ") and "corrupt" in err and why in err, err
    assert greedy(rebuilt) == expected
    assert gguf_cache._cache_problem(target) is None and leftovers(target) == []
    models.load(str(gguf))  # the rebuilt cache is trusted again: no warning, no conversion
    assert loader.calls == 2 and capsys.readouterr().err == ""


def test_a_cache_from_before_checksums_is_adopted_silently(stand_in, capsys) -> None:
    gguf, loader = stand_in
    target = models.convert_gguf(gguf)
    (target / gguf_cache.CHECKSUMS).unlink()
    models.load(str(gguf))
    assert loader.calls == 1 and capsys.readouterr().err == ""
    assert (target / gguf_cache.CHECKSUMS).is_file()


# --- read-only and full caches -------------------------------------------------------------------

@pytest.fixture
def read_only(cache: Path, monkeypatch):
    """Make the cache unwritable. chmod does not stop root, so os.mkdir (which Path.mkdir and
    tempfile.mkdtemp use) also fails with EROFS under the cache, as on a read-only mount."""
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, *args, **kwargs):
        if Path(path).resolve().is_relative_to(cache.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, mode, *args, **kwargs)

    def apply() -> None:
        monkeypatch.setattr(os, "mkdir", mkdir)
        if cache.exists():
            for path in [cache, *cache.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o555)

    yield apply
    for path in [cache, *cache.rglob("*")] if cache.exists() else []:
        if path.is_dir():
            path.chmod(0o755)


def test_a_read_only_cache_converts_into_a_temporary_directory_with_a_warning(stand_in, read_only, capsys,
                                                                            cache: Path) -> None:
    gguf, loader = stand_in
    read_only()
    loaded = models.load(str(gguf))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "llmgen: warning: cannot write the model cache" in err, err
    assert "Read-only file system" in err and "temporary directory" in err
    assert not loaded.path.is_relative_to(cache) and (loaded.path / "model.safetensors").is_file()
    assert len(greedy(loaded)) == 8
    assert not (cache / "gguf").exists()


def test_a_valid_cache_on_a_read_only_disk_is_used_without_a_warning(stand_in, read_only, capsys) -> None:
    gguf, loader = stand_in
    target = models.convert_gguf(gguf)
    read_only()
    capsys.readouterr()
    assert models.load(str(gguf)).path == target
    assert loader.calls == 1 and capsys.readouterr().err == ""


def test_generate_works_with_a_read_only_cache(stand_in, read_only, capsys) -> None:
    gguf, _ = stand_in
    read_only()
    code = main(["generate", "-m", str(gguf), "--raw", "--greedy", "-N", "5", "--ignore-eos", "--json", "abc"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 5
    warnings = [line for line in err.splitlines() if line.startswith("llmgen: warning:")]
    assert len(warnings) == 1 and "cannot write the model cache" in warnings[0]


def test_a_full_cache_converts_into_a_temporary_directory_with_a_warning(stand_in, capsys, cache: Path) -> None:
    gguf, loader = stand_in

    def disk_full(directory: Path) -> None:
        if directory.is_relative_to(cache):
            (directory / "model.safetensors").write_bytes(b"part of the weights")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    loader.on_save = disk_full
    loaded = models.load(str(gguf))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "temporary directory" in err, err
    assert loader.calls == 1  # the model read once is saved to the temporary directory
    assert not loaded.path.is_relative_to(cache) and len(greedy(loaded)) == 8
    target = models.gguf_cache_path(gguf)
    assert not target.exists() and leftovers(target) == []


# --- concurrent conversions ----------------------------------------------------------------------

def test_two_conversions_at_once_without_a_lock_both_succeed(stand_in, monkeypatch) -> None:
    """Where no lock can be taken (no fcntl, a lock dir that cannot be created), write-then-rename
    alone keeps both runs right: both convert, one rename wins, the other run uses the winner's."""
    import contextlib

    gguf, loader = stand_in
    monkeypatch.setattr(gguf_cache, "_conversion_lock", lambda target: contextlib.nullcontext())
    both_saving = threading.Barrier(2, timeout=60)
    loader.on_save = lambda directory: both_saving.wait()
    results: dict[int, Path | BaseException] = {}

    def run(index: int) -> None:
        try:
            results[index] = models.convert_gguf(gguf)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    target = models.gguf_cache_path(gguf)
    assert results == {0: target, 1: target}
    assert loader.calls == 2 and gguf_cache._cache_problem(target) is None and leftovers(target) == []
    loader.on_save = None
    assert len(greedy(models.load(str(gguf)))) == 8


DRIVER = r'''
"""Runs `llmgen` with transformers' GGUF reading replaced by the tiny char model, logging events."""
import os, sys, time
from pathlib import Path
import transformers

source, log = Path(sys.argv[1]), Path(sys.argv[2])
real_model = transformers.AutoModelForCausalLM.from_pretrained
real_tokenizer = transformers.AutoTokenizer.from_pretrained

def note(event):
    with open(log, "a") as f:
        f.write(f"{event} {os.getpid()}\n")

def model(*args, **kwargs):
    if "gguf_file" not in kwargs:
        return real_model(*args, **kwargs)
    note("convert")
    loaded = real_model(source)
    save = loaded.save_pretrained
    def slow_save(directory, *a, **k):
        (Path(directory) / "model.safetensors").write_bytes(b"half-written")
        note("saving")
        time.sleep(float(os.environ.get("STANDIN_SAVE_SECONDS", "0")))
        return save(directory, *a, **k)
    loaded.save_pretrained = slow_save
    return loaded

def tokenizer(*args, **kwargs):
    return real_tokenizer(source) if "gguf_file" in kwargs else real_tokenizer(*args, **kwargs)

transformers.AutoModelForCausalLM.from_pretrained = model
transformers.AutoTokenizer.from_pretrained = tokenizer
from llmgen.cli import main
sys.exit(main(sys.argv[3:]))
'''


def llmgen_with_stand_in(tmp_path: Path, char_model: Path, cache: Path, args: list[str],
                         save_seconds: float) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "LLMGEN_CACHE_DIR": str(cache), "STANDIN_SAVE_SECONDS": str(save_seconds),
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(driver), str(char_model), str(tmp_path / "events.log"), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, word: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and word in path.read_text():
            return
        assert proc.poll() is None, proc.communicate()[1].decode()
        time.sleep(0.05)
    raise AssertionError(f"no {word!r} event in {timeout} s")


GENERATE = ["generate", "--raw", "--greedy", "-N", "6", "--ignore-eos", "--json", "abc"]


def test_two_processes_converting_at_once_both_succeed_and_convert_once(tmp_path, char_model, cache) -> None:
    gguf = write_gguf(tmp_path / "tiny.gguf")
    procs = [llmgen_with_stand_in(tmp_path, char_model, cache, [GENERATE[0], "-m", str(gguf), *GENERATE[1:]],
                                  save_seconds=1.5) for _ in range(2)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    assert json.loads(outputs[0][0])["token_ids"] == json.loads(outputs[1][0])["token_ids"]
    events = (tmp_path / "events.log").read_text().split()
    assert events.count("convert") == 1  # the second run waited on the lock, then found the cache
    target = models.gguf_cache_path(gguf)
    assert gguf_cache._cache_problem(target) is None and leftovers(target) == []


def test_a_run_killed_mid_conversion_leaves_nothing_the_next_run_would_load(tmp_path, char_model, cache,
                                                                            stand_in) -> None:
    gguf, loader = stand_in
    proc = llmgen_with_stand_in(tmp_path, char_model, cache, [GENERATE[0], "-m", str(gguf), *GENERATE[1:]],
                                save_seconds=120)
    wait_for(tmp_path / "events.log", "saving", proc)
    proc.kill()  # SIGKILL: no finally block runs
    proc.communicate(timeout=60)
    target = models.gguf_cache_path(gguf)
    assert not target.exists()
    assert len(leftovers(target)) == 1  # the killed run's half-written temporary directory
    loaded = models.load(str(gguf))  # reconverts; the stale directory is removed under the lock
    assert loader.calls == 1 and loaded.path == target and leftovers(target) == []
    assert len(greedy(loaded)) == 8


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_conversion_exits_with_its_code_and_leaves_no_cache(tmp_path, char_model, cache,
                                                                         sig, code) -> None:
    gguf = write_gguf(tmp_path / "tiny.gguf")
    proc = llmgen_with_stand_in(tmp_path, char_model, cache, [GENERATE[0], "-m", str(gguf), *GENERATE[1:]],
                                save_seconds=120)
    wait_for(tmp_path / "events.log", "saving", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    target = models.gguf_cache_path(gguf)
    assert not target.exists() and leftovers(target) == []
