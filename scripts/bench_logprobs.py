#!/usr/bin/env python
"""The cost of --logprobs on plain decoding: decode tokens/s without logprobs and with --logprobs N.

    python scripts/bench_logprobs.py                    # N = 5, raw and processed, 7 interleaved rounds
    python scripts/bench_logprobs.py --top 20 --rounds 9 --max-new-tokens 96
    python scripts/bench_logprobs.py --micro-only       # only the per-token cost, a few seconds

Each round decodes the same greedy sequence (EOS ignored) once per variant, in a rotating order, so
that drifts in machine load hit every variant alike; the decode tokens/s of each variant is the median
over rounds, and the overhead is 1 - median(with) / median(without). Target: at most 5% at N = 5.
It also times `token_logprobs` alone on logits of the model's vocabulary (median of 300 calls): the
work --logprobs adds to each step, which is what remains when end-to-end runs are too noisy to see it.
Writes docs/results/bench-logprobs.json and prints the markdown rows of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.generation import generate  # noqa: E402
from llmgen.decoding.logprobs import LogprobSpec, token_logprobs  # noqa: E402
from llmgen.decoding.processors import process  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.loading import models  # noqa: E402

PROMPT = "Write a short story about a robot who learns to paint."


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def decode_speed(loaded: models.LoadedModel, ids: list[int], config: DecodingConfig, spec: LogprobSpec | None) -> float:
    result = generate(loaded, ids, config, generator=make_generator(0, loaded.device), logprobs=spec)
    return result.stats["tokens_per_second"]


def per_token_ms(vocab: int, spec: LogprobSpec, calls: int = 300) -> float:
    """Median milliseconds of one `token_logprobs` call on [1, vocab] logits (top-p 0.9 for 'processed')."""
    import time

    import torch

    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(0)) * 3
    processed = process(logits, None, DecodingConfig(top_p=0.9))
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        token_logprobs(logits, processed, [5], spec)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "bench-logprobs.json")
    parser.add_argument("--micro-only", action="store_true", help="only time token_logprobs itself")
    args = parser.parse_args()

    loaded = models.load(args.model)
    micro = {mode: round(per_token_ms(loaded.vocab_size, LogprobSpec(args.top, mode)), 4)
             for mode in ("raw", "processed")}
    print(f"token_logprobs per token, vocab {loaded.vocab_size}, N={args.top}: "
          + ", ".join(f"{m} {v:.3f} ms" for m, v in micro.items()))
    if args.micro_only:
        return
    messages = [{"role": "user", "content": PROMPT}]
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    config = DecodingConfig(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    variants = {"off": None, f"raw, N={args.top}": LogprobSpec(args.top, "raw"),
                f"processed, N={args.top}": LogprobSpec(args.top, "processed")}
    names = list(variants)
    for name in names:  # warm-up
        decode_speed(loaded, ids, config.replace(max_new_tokens=8), variants[name])
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            speeds[name].append(decode_speed(loaded, ids, config, variants[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.1f}" for n in names), file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    base = medians["off"]
    report = {
        "date": datetime.date.today().isoformat(), "cpu": cpu_model(), "model": args.model,
        "device": str(loaded.device), "threads": __import__("torch").get_num_threads(),
        "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "tokens_per_second": speeds,
        "median_tokens_per_second": medians,
        "overhead": {name: round(1 - medians[name] / base, 4) for name in names if name != "off"},
        "token_logprobs_ms": micro,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| logprobs | decode tok/s (median) | overhead |\n|---|---|---|")
    for name in names:
        overhead = "—" if name == "off" else f"{100 * (1 - medians[name] / base):+.1f}%"
        print(f"| {name} | {medians[name]:.1f} | {overhead} |")


if __name__ == "__main__":
    main()
