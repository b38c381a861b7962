"""`llmgen score` on the torch engine against HF's forward over the same windows (docs/benchmarks.md).

Both read the kjv-genesis corpus with the same sliding windows (window L, stride S): llmgen through
`evaluate.scoring.score_ids` (the engine's all-logits forward, log_softmax, the text tokens' logprobs),
HF through `model(input_ids=window).logits` and the same log_softmax and gather. Runs interleave; the
median of each is reported, with the largest difference in a token's logprob.

    PYTHONPATH=. python scripts/bench_score.py [--model smollm2-135m] [--window 1024] [--stride 512] [--runs 5]
        [--tokens N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmgen.evaluate import corpus
from llmgen.evaluate.scoring import score_ids
from llmgen.loading import models


def hf_scores(model, ids: list[int], window: int, stride: int) -> list[float]:
    out: list[float] = []
    prev_end = 0
    with torch.inference_mode():
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            logits = model(input_ids=torch.tensor([ids[begin:end]])).logits[0].float()
            first = max(prev_end, begin + 1)
            rows = torch.log_softmax(logits[first - 1 - begin:end - 1 - begin], dim=-1)
            out.extend(rows.gather(-1, torch.tensor(ids[first:end])[:, None])[:, 0].tolist())
            prev_end = end
            if end == len(ids):
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=0, help="score only the corpus's first N tokens (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = models.load(args.model)
    ids = [int(i) for i in loaded.tokenizer(corpus.load())["input_ids"]]
    ids = ids[:args.tokens] if args.tokens else ids
    times: dict[str, list[float]] = {"llmgen": [], "hf": []}
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name in ("llmgen", "hf"):  # NOTE: interleaved, so that a noisy neighbour hits both
            started = time.perf_counter()
            if name == "llmgen":
                results[name] = [t.logprob for t in score_ids(loaded.engine.sequence, ids, args.window,
                                                              args.stride).tokens]
            else:
                results[name] = hf_scores(loaded.model, ids, args.window, args.stride)
            times[name].append(time.perf_counter() - started)
    llm, hf = statistics.median(times["llmgen"]), statistics.median(times["hf"])
    diff = max(abs(a - b) for a, b in zip(results["llmgen"], results["hf"]))
    tokens = len(ids) - 1
    print(f"{tokens} tokens, window {args.window}, stride {args.stride}, {args.threads} thread(s), {args.runs} runs")
    print(f"llmgen score: {llm:.3f} s median ({tokens / llm:.0f} tok/s), runs {[round(t, 3) for t in times['llmgen']]}")
    print(f"HF forward:   {hf:.3f} s median ({tokens / hf:.0f} tok/s), runs {[round(t, 3) for t in times['hf']]}")
    print(f"llmgen / HF speed: {hf / llm:.3f}x; largest logprob difference {diff:.2e}")


if __name__ == "__main__":
    main()
