"""Measurements of the llama.cpp engine that `llmgen bench` does not make (docs/benchmarks.md, "Engines").

    python scripts/bench_engines.py rows FILE.gguf [--threads 1] [--new 64]
        -n 8 against one row: one grounded prompt prefilled once, then decoded greedily as 1 row and
        as 8 rows of one batch (the rows cache's step, as `-n 8` runs it), interleaved, 3 times each;
        decode throughput in tokens/s over all rows (the prefill excluded).
    python scripts/bench_engines.py invariance FILE.gguf [--threads 1] [--new 64]
        Batch invariance: the 10 grounded prompts decoded greedily as 10 rows of one batch (continuous
        batching, `--input`), against each prompt alone; how many rows differ, and where they first do.
"""

from __future__ import annotations

import argparse
import statistics
import time

from llmgen.bench.prompts import load as load_prompts
from llmgen.decoding.batch import Row, decode_rows, row_generator
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import stream
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import encode_prompt
from llmgen.loading import models


def rows_throughput(loaded, ids: list[int], new: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"1 row": [], "8 rows": []}
    for _ in range(3):
        for n, label in ((1, "1 row"), (8, "8 rows")):
            cache = loaded.engine.rows()
            first = cache.add([ids])  # the prefill, not timed: one row, then repeated n times (as -n does)
            cache.select([0] * n)
            tokens = first.argmax(-1).repeat(n)
            started = time.perf_counter()
            for _ in range(new - 1):
                tokens = cache.step(tokens).argmax(-1)
            out[label].append(n * (new - 1) / (time.perf_counter() - started))
    return out


def invariance(loaded, prompts: list[list[int]], new: int) -> list[int | None]:
    config = DecodingConfig(temperature=0.0, max_new_tokens=new, ignore_eos=True)
    batched: dict[int, list[int]] = {}
    rows = [Row(i, p, config, row_generator(None, i)) for i, p in enumerate(prompts)]
    decode_rows(loaded.engine.rows(), rows, loaded.info, batch_size=len(prompts),
                on_done=lambda row, result: batched.__setitem__(row.key, result.token_ids))
    first: list[int | None] = []
    for i, prompt in enumerate(prompts):
        tokens = (t.id for t in stream(loaded, prompt, config, make_generator(0)))
        alone = [next(tokens) for _ in range(new)]
        first.append(next((j for j, (a, b) in enumerate(zip(alone, batched[i])) if a != b), None))
    return first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["rows", "invariance"])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    loaded = models.load(args.model, engine="llamacpp", threads=args.threads)
    texts = load_prompts("grounded").prompts
    prompts = [encode_prompt(loaded, text, None) for text in texts]
    if args.what == "rows":
        speeds = rows_throughput(loaded, prompts[0], args.new)
        for label, values in speeds.items():
            print(f"{label}: median {statistics.median(values):.1f} tok/s ({min(values):.1f}-{max(values):.1f})")
        print(f"8 rows / 1 row: {statistics.median(speeds['8 rows']) / statistics.median(speeds['1 row']):.2f}x")
    else:
        first = invariance(loaded, prompts, args.new)
        differ = [f for f in first if f is not None]
        print(f"{len(differ)} of {len(first)} rows differ from the prompt alone (first differing token: {first})")


if __name__ == "__main__":
    main()
