"""Load time of a model from the safetensors cache against its first GGUF conversion.

Each load runs in a fresh Python process, so that neither one finds the other's files in the page
cache's favour or its memory in this process, and each reports its own peak RSS:

- first load: `LLMGEN_CACHE_DIR` points at an empty temporary directory, so the GGUF file is
  dequantized and written to safetensors before the model is loaded;
- cached load: the same model from the user's cache (converted first if needed, untimed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from llmgen.errors import ModelError

# NOTE: the peak comes from VmHWM, which starts afresh with the new program; ru_maxrss would carry
# the parent's peak over (Linux keeps it across fork and exec).
_PROBE = """
import json, resource, sys, time
started = time.perf_counter()
from llmgen.loading import models
loaded = models.load(sys.argv[1], quant=sys.argv[2])
generate = int(sys.argv[3])
if generate:  # a greedy run after loading, so that the peak includes the KV cache and activations
    from llmgen.decoding.config import DecodingConfig
    from llmgen.decoding.plain import plain_tokens
    from llmgen.decoding.sampling import make_generator
    ids = loaded.tokenizer("Write a short story about a lighthouse keeper.")["input_ids"]
    tokens = (t.id for t in plain_tokens(loaded.engine.sequence(), ids, DecodingConfig(temperature=0.0), make_generator(0)))
    for _ in range(generate):
        next(tokens)
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load_seconds": loaded.load_seconds, "with_imports_seconds": time.perf_counter() - started,
                  "peak_rss_bytes": peak}))
"""


def _probe(ref: str, cache_dir: str | None, quant: str = "auto", generate: int = 0) -> dict[str, Any]:
    env = dict(os.environ)
    if cache_dir is not None:
        env["LLMGEN_CACHE_DIR"] = cache_dir
    done = subprocess.run([sys.executable, "-c", _PROBE, ref, quant, str(generate)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise ModelError(f"loading {ref!r} in a fresh process failed: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cached_run(ref: str, quant: str, generate: int = 0) -> dict[str, Any]:
    """A load from the user's cache (and `generate` greedy tokens) in a fresh process: load_seconds,
    peak_rss_bytes."""
    return _probe(ref, None, quant, generate)


def load_times(ref: str) -> dict[str, dict[str, Any]]:
    """{"first_load": {...}, "cached_load": {...}}, each with load_seconds and peak_rss_bytes."""
    with tempfile.TemporaryDirectory(prefix="llmgen-bench-cache-") as empty:
        first = _probe(ref, empty)
    _probe(ref, None)  # make sure the user's cache holds it
    cached = _probe(ref, None)
    return {"first_load": first, "cached_load": cached}
