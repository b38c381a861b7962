#!/usr/bin/env python
"""`generate --input` over Ray against one process, end to end, interleaved:

    python scripts/bench_ray.py [--runs 2] [--prompts 16] [--max-new-tokens 64]

- one process, 2 torch threads: `llmgen generate --input FILE --json --greedy`
- Ray, 2 actors x 1 thread:     the same with `--ray local --ray-actors 2 --ray-threads 1`

Each run is a fresh `llmgen` process (model load and, for Ray, starting Ray and its actors included),
on the embedded model and the open prompt set. Prints the medians, the ratio, the CPU and the date.
The outputs are also compared: greedy rows must be identical.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmgen.bench import prompts as prompt_sets


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def run(args: list[str], threads: int) -> tuple[float, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "llmgen", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"llmgen failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds, [json.loads(line) for line in done.stdout.splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", help="default: llmgen's default model")
    args = parser.parse_args()
    texts = list(prompt_sets.load("open").prompts)
    texts = (texts * (args.prompts // len(texts) + 1))[:args.prompts]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
        common = ["generate", "--input", str(path), "--json", "--greedy", "-q", "-N", str(args.max_new_tokens),
                  "--ignore-eos", *(["-m", args.model] if args.model else [])]
        sides = {"1 process x 2 threads": (common, 2),
                 "Ray, 2 actors x 1 thread": ([*common, "--ray", "local", "--ray-actors", "2", "--ray-threads", "1"], 1)}
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        rows: dict[str, list[dict]] = {}
        for _ in range(args.runs):
            for name, (argv, threads) in sides.items():
                elapsed, rows[name] = run(argv, threads)
                seconds[name].append(elapsed)
    tokens = args.prompts * args.max_new_tokens
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{date} · {cpu_model()}, {os.cpu_count()} cores · {args.prompts} open prompts x {args.max_new_tokens} "
          f"greedy tokens · median of {args.runs} interleaved fresh processes (load and start-up included)\n")
    print("| how | seconds (median) | tok/s |\n|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {tokens / median:.1f} |")
    names = list(sides)
    ratio = statistics.median(seconds[names[0]]) / statistics.median(seconds[names[1]])
    same = [r["token_ids"] for r in rows[names[0]]] == [r["token_ids"] for r in rows[names[1]]]
    print(f"\nRay against one process: {ratio:.2f}x; identical greedy rows: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
