"""A 2,000-token prompt read from a prompt-cache file (`--prompt-cache`), time to first token against a cold
prefill: the file's load, its checks (model digest, engine, checksum) and the last token's forward, against
the whole prefill; interleaved, medians of --runs, 1 thread.

    python scripts/bench_prompt_cache.py [--model REF] [--engine auto] [--runs 3] [--tokens 2000]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from llmgen.decoding import generation
from llmgen.decoding.config import DecodingConfig
from llmgen.loading import models, prompt_cache

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=models.DEFAULT_MODEL, help="the model (default: the embedded SmolLM2 GGUF)")
parser.add_argument("--engine", default="auto", help="auto (llama.cpp for a GGUF), torch or llamacpp")
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--tokens", type=int, default=2000, help="the prompt's length")
args = parser.parse_args()
loaded = models.load(args.model, engine=args.engine, threads=1)
text = " ".join(f"Entry {i}: the keeper logged wind, tide and the lamp's oil at dawn and at dusk." for i in range(130))
ids = [int(t) for t in loaded.tokenizer(text * (1 + args.tokens // 2000))["input_ids"]][:args.tokens]
print("prompt tokens", len(ids))
path = pathlib.Path(tempfile.mkdtemp()) / "p.kv"
config = DecodingConfig(max_new_tokens=1, temperature=0.0)
lm = loaded.engine.sequence()
lm.forward(ids)
prompt_cache.keep(path, loaded, ids, lm)
cold, warm, same = [], [], True
for _ in range(args.runs):
    started = time.perf_counter()
    plain = generation.generate(loaded, ids, config)
    cold.append(time.perf_counter() - started)
    started = time.perf_counter()
    lm, reused = prompt_cache.start(path, loaded, ids, print)
    cached = generation.generate(loaded, ids, config, lm=lm)
    warm.append(time.perf_counter() - started)
    same &= plain.token_ids == cached.token_ids and reused == len(ids) - 1
c, w = statistics.median(cold), statistics.median(warm)
print(f"cold prefill {c:.3f} s; from the file {w:.3f} s (load, checks, the last token): {w / c:.3f}x; "
      f"same tokens: {same}; file {path.stat().st_size / 2**20:.0f} MB")
