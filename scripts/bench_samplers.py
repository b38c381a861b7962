#!/usr/bin/env python
"""The sampler chain's cost, and the batched paths it speeds up, on the embedded model (1 thread).

    python scripts/bench_samplers.py --runs 3 --json-out docs/results/bench-samplers.json

Sections (medians of runs that alternate between the sides, A B, B A, ...):
- chain: the whole chain with every stage on (token controls, penalties, DRY, top-n-sigma, dynamic
  temperature, top-k, typical-p, top-p, min-p, epsilon, eta, XTC, Mirostat) on one row of real logits
  (49,152 tokens, a context of about 100 tokens), per token, against one decode step of the model;
  and top-p 0.9 alone, with the prefilter and with the full sort.
- n8: `generate -n 8` (`sample_rows`) against HF `generate(num_return_sequences=8)`, top-p 0.9,
  64 new tokens per row (EOS ignored; HF through min_new_tokens).
- input: 16 prompts of the open set, top-p 0.9, up to 32 new tokens, `--input` at batch 4
  (`decode_rows`) against one at a time (`generation.generate`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from llmgen.bench.batch import interleaved, prompts_of, summary  # noqa: E402
from llmgen.decoding.batch import Row, decode_rows, row_generator, sample_rows  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.generation import generate, stream  # noqa: E402
from llmgen.decoding.processors import Context, process, token_counts, top_p_sorted  # noqa: E402
from llmgen.decoding.processors.tables import build_tables  # noqa: E402
from llmgen.decoding.processors.truncation import apply_top_p  # noqa: E402
from llmgen.loading import models  # noqa: E402

SEED = 1234
ALL_ON = DecodingConfig(logit_bias=((4, 1.0),), min_tokens=4, bad_words=("the end",), presence_penalty=0.3,
                        repetition_penalty=1.1, dry_multiplier=0.8, top_n_sigma=3.0, temperature=0.9,
                        dynatemp_range=0.3, top_k=200, typical_p=0.95, top_p=0.9, min_p=0.02, epsilon_cutoff=1e-4,
                        eta_cutoff=1e-4, xtc_probability=0.3, mirostat=2)


def timed(fn: Any, reps: int) -> float:
    """Median seconds of `reps` calls."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_chain(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompt = prompts_of(loaded, 1)[0]
    lm = loaded.engine.sequence()
    tokens = (t.id for t in stream(loaded, prompt, DecodingConfig(top_p=0.9, seed=SEED), row_generator(SEED, 0), lm=lm))
    generated = [next(tokens) for _ in range(64)]
    step_logits = lm.forward([generated[-1]])  # [1, vocab]: the next position's logits
    vocab = step_logits.shape[-1]
    tables = build_tables(ALL_ON, loaded.tokenizer, loaded.eos_token_ids, vocab)
    context = [Context(prompt, generated, [3.0] * len(generated), tables)]
    counts = token_counts(generated, vocab)[None]
    feed = iter(generated * 8)

    def step() -> None:  # one decode step: one more token through the model and its KV cache
        lm.forward([next(feed)])

    out: dict[str, list[float]] = {"decode step": [], "chain, every stage on": [], "top-p 0.9, prefilter": [],
                                   "top-p 0.9, full sort": []}
    for _ in range(runs):
        out["decode step"].append(timed(step, 10))
        out["chain, every stage on"].append(timed(lambda: process(step_logits, counts, ALL_ON, None, context), 20))
        out["top-p 0.9, prefilter"].append(timed(lambda: apply_top_p(step_logits, 0.9), 20))
        out["top-p 0.9, full sort"].append(timed(lambda: top_p_sorted(step_logits, 0.9), 20))
    med = {k: statistics.median(v) * 1000 for k, v in out.items()}
    return {"milliseconds": {k: round(v, 3) for k, v in med.items()},
            "runs_ms": {k: [round(x * 1000, 3) for x in v] for k, v in out.items()},
            "chain_share_of_a_step": round(med["chain, every stage on"] / med["decode step"], 3)}


def bench_n8(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompts = prompts_of(loaded, 10)
    config = DecodingConfig(top_p=0.9, n=8, max_new_tokens=64, ignore_eos=True, seed=SEED)

    def ours(run: int) -> int:
        return sum(len(r.token_ids) for r in sample_rows(loaded.engine.rows(), prompts[run % 10], config,
                                                          loaded.info))

    @torch.inference_mode()
    def hf(run: int) -> int:
        ids = torch.tensor([prompts[run % 10]])
        gen = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, top_k=0,
                                    temperature=1.0, max_new_tokens=64, min_new_tokens=64, num_return_sequences=8,
                                    pad_token_id=min(loaded.eos_token_ids))
        return int(gen[:, ids.shape[1]:].numel())

    return summary(interleaved(runs, {"llmgen -n 8": ours, "HF num_return_sequences=8": hf}),
                   "llmgen -n 8", "HF num_return_sequences=8")


def bench_input(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompts = prompts_of(loaded, 16)
    config = DecodingConfig(top_p=0.9, max_new_tokens=32, seed=SEED)

    def batched(run: int) -> int:
        done: list[int] = []
        rows = [Row(i, p, config, row_generator(SEED, i)) for i, p in enumerate(prompts)]
        decode_rows(loaded.engine.rows(), rows, loaded.info, batch_size=4,
                    on_done=lambda row, result: done.append(len(result.token_ids)))
        return sum(done)

    def one_at_a_time(run: int) -> int:
        total = 0
        for i, p in enumerate(prompts):
            total += len(generate(loaded, p, config, generator=row_generator(SEED, i)).token_ids)
        return total

    return summary(interleaved(runs, {"batch 4": batched, "one at a time": one_at_a_time}), "batch 4",
                   "one at a time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="chain,n8,input")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="default: %(default)s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = models.load(args.model)
    # warm-up of every path
    bench_chain(loaded, 1)
    results: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
                               "threads": 1, "torch": torch.__version__, "load_before": os.getloadavg()}
    for section in args.sections.split(","):
        results[section] = {"chain": bench_chain, "n8": bench_n8, "input": bench_input}[section](loaded, args.runs)
        print(section, json.dumps(results[section]), flush=True)
    results["load_after"] = os.getloadavg()
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
