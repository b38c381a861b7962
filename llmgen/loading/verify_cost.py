"""The cost of a speculative verify on this engine, model and thread count, measured once and cached.

    v(k) = seconds of one forward over k tokens with logits at all k  /  seconds of a one-token forward

`decoding/speculative/gamma.py` chooses γ from this curve. It differs by engine far more than by model:
on one Xeon thread a llama.cpp verify of 16 tokens costs 6.5 steps (SmolLM2 Q4_1) where the torch
engine's float32 forward costs 2.1 (its matmuls are memory-bound, llama.cpp's quantized ones are not),
so a draft that pays on one engine loses on the other.

Measurement (`measure`): after a prefill of 64 tokens, forwards over k = 1, 2, 3, 4, 6, 8, 16 tokens,
each rolled back at once, interleaved round by round, at least `MIN_ROUNDS` rounds and until
`BUDGET_SECONDS` are spent (at most `MAX_ROUNDS`); v(k) is the median of the k-token seconds over the
median of the one-token ones (two of those per round). About 1-2 s for the test files on one thread.

The cache: one JSON file per key under `<cache dir>/verify-cost/`; the key is the engine, the model
file's path, size and modification time, its quantization and dtype, the threads, the CPU model and
the library version, so a changed file, thread count or machine is measured again. A file that cannot be
read, names another key or holds a malformed curve is ignored with one line on stderr and measured
again. An unwritable cache keeps the measurement in this process only.

Override: `LLMGEN_VERIFY_COST="1:1,2:1.3,4:2.2,8:3.7,16:6.5"` gives the curve and measures nothing
(the test suite sets one; `auto` or unset: measure).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llmgen.errors import UsageError
from llmgen.loading.hfutil import warn
from llmgen.userdirs import cache_dir

if TYPE_CHECKING:
    from llmgen.loading.engines.base import Engine
    from llmgen.loading.loaded import LoadedModel

ENV = "LLMGEN_VERIFY_COST"
SIZES = (1, 2, 3, 4, 6, 8, 16)  # forward sizes measured; others are interpolated (`gamma.interpolate`)
PREFILL = 64  # tokens in the cache before each measured forward
MIN_ROUNDS, MAX_ROUNDS = 3, 7
BUDGET_SECONDS = 1.5
VERSION = 1  # of the file format and the method; part of the key


@dataclass(frozen=True)
class VerifyCost:
    """v(k) for the measured sizes (v(1) = 1), and the seconds of a one-token forward when measured."""

    curve: dict[int, float]
    step_seconds: float | None  # None when the curve was given (`LLMGEN_VERIFY_COST`)
    source: str  # "measured", "cached" or "given"


_memo: dict[str, VerifyCost] = {}  # key digest -> cost, for this process


def parse_curve(text: str) -> dict[int, float]:
    """'1:1,2:1.3,4:2.2' -> {1: 1.0, 2: 1.3, 4: 2.2}; a usage error unless every k >= 1 and every v > 0,
    with k = 1 among them (the unit)."""
    curve: dict[int, float] = {}
    for item in text.split(","):
        k, sep, v = item.partition(":")
        try:
            size, cost = int(k), float(v)
        except ValueError:
            size, cost, sep = 0, 0.0, ""
        if not sep or size < 1 or not cost > 0:
            raise UsageError(f"{ENV}: {item.strip()!r} is not k:cost with k >= 1 and cost > 0 "
                             "(e.g. 1:1,2:1.3,4:2.2,8:3.7)")
        curve[size] = cost
    if 1 not in curve:
        raise UsageError(f"{ENV}: the curve needs k = 1 (the cost of one token), e.g. 1:1,2:1.3")
    return {k: curve[k] / curve[1] for k in sorted(curve)}


def verify_cost(loaded: LoadedModel) -> VerifyCost:
    """The verify cost of `loaded` on its engine and threads: given by `LLMGEN_VERIFY_COST`, else from
    this process's memo, else from the cache file, else measured now (and cached)."""
    given = os.environ.get(ENV, "").strip()
    if given and given.lower() != "auto":
        return VerifyCost(parse_curve(given), None, "given")
    key = cache_key(loaded)
    digest = _digest(key)
    if digest in _memo:
        return _memo[digest]
    path = cache_path(key)
    cost = read_cached(path, key)
    if cost is None:
        curve, step = measure(loaded.engine, loaded.vocab_size, loaded.context_length)
        cost = VerifyCost(curve, step, "measured")
        write_cached(path, key, cost)
    _memo[digest] = cost
    return cost


def threads_of(loaded: LoadedModel) -> int:
    """The threads of a forward: llama.cpp's n_threads, or torch's intra-op threads."""
    if loaded.engine.name == "llamacpp":
        return int(cast(Any, loaded.engine).model.threads)
    import torch

    return torch.get_num_threads()


def cache_key(loaded: LoadedModel) -> dict[str, str]:
    """What the curve depends on: engine, model file (path, size, mtime), quantization, dtype, threads,
    CPU, library version."""
    engine = loaded.engine.name
    if engine == "llamacpp":
        import llama_cpp

        library = f"llama_cpp {llama_cpp.__version__}"
    else:
        import torch

        library = f"torch {torch.__version__}"
    return {"version": str(VERSION), "engine": engine, "model": _fingerprint(Path(loaded.path)),
            "quant": loaded.quant, "dtype": str(loaded.dtype).removeprefix("torch."),
            "device": str(loaded.device), "threads": str(threads_of(loaded)), "cpu": cpu_name(), "library": library}


def cache_path(key: Mapping[str, str]) -> Path:
    name = Path(key["model"].split("|", 1)[0]).name.replace(" ", "_")[:60]
    return cache_dir() / "verify-cost" / f"{key['engine']}-{name}-t{key['threads']}-{_digest(key)[:16]}.json"


def read_cached(path: Path, key: Mapping[str, str]) -> VerifyCost | None:
    """The cached cost for `key`, or None: no file, or one that is damaged or names another key (said in one line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        warn(f"ignoring the verify-cost cache {path}: {err.strerror or err}; measuring again")
        return None
    try:
        data = json.loads(text)
        if data["key"] != dict(key):
            raise ValueError("it was measured for another key")
        curve = {int(k): float(v) for k, v in data["curve"].items()}
        step = float(data["step_seconds"])
        if curve.get(1) != 1.0 or any(not v > 0 for v in curve.values()) or not step > 0:
            raise ValueError("its curve is malformed")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        warn(f"ignoring the verify-cost cache {path.name}: {err}; measuring again")
        return None
    return VerifyCost(curve, step, "cached")


def write_cached(path: Path, key: Mapping[str, str], cost: VerifyCost) -> None:
    """Write beside the target, then rename; an unwritable cache is skipped silently (the memo keeps it)."""
    data = {"key": dict(key), "curve": {str(k): round(v, 4) for k, v in cost.curve.items()},
            "step_seconds": cost.step_seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)


def measure(engine: Engine, vocab: int, context_length: int, sizes: tuple[int, ...] = SIZES,
            budget: float = BUDGET_SECONDS) -> tuple[dict[int, float], float]:
    """(v(k) for each k in `sizes` that fits the context, seconds of a one-token forward): see the module's
    docstring. Token ids are arbitrary (the cost does not depend on them)."""
    import torch

    sizes = tuple(k for k in sizes if k < context_length)
    prefill = max(1, min(PREFILL, context_length - max(sizes) - 1))
    ids = [(17 + 7919 * i) % min(vocab, 32000) for i in range(prefill + max(sizes))]
    lm = engine.sequence()
    samples: dict[int, list[float]] = {k: [] for k in sizes}
    with torch.inference_mode():
        lm.forward(ids[:prefill])
        started = time.perf_counter()
        rounds = 0
        while rounds < MIN_ROUNDS or (rounds < MAX_ROUNDS and time.perf_counter() - started < budget):
            # NOTE: one-token forwards at both ends of a round, so that load that changes within a round
            # moves the denominator as much as the larger sizes.
            for k in (1, *(k for k in sizes if k > 1), 1):
                begin = time.perf_counter()
                lm.forward(ids[prefill:prefill + k], all_logits=True)
                samples[k].append(time.perf_counter() - begin)
                lm.rollback(prefill)
            rounds += 1
    one = statistics.median(samples[1])
    return {k: 1.0 if k == 1 else statistics.median(samples[k]) / one for k in sizes}, one


@functools.cache
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else the platform's machine name)."""
    import platform

    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _fingerprint(path: Path) -> str:
    """Path, size and modification time of a model file, or of a model directory's files."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file())
    parts = []
    for f in files:
        with contextlib.suppress(OSError):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return f"{path}|{hashlib.sha256(';'.join(parts).encode()).hexdigest()[:16]}"


def _digest(key: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()
