#!/usr/bin/env python
"""llmgen beam search against HF beam search (B = 4) on the embedded model: tokens/s and their ratio.

    python scripts/bench_beam.py                       # median of 5 interleaved runs
    python scripts/bench_beam.py --runs 7 --max-new-tokens 96 --device cuda

Both sides run end to end, prompt in, best hypothesis out: beam search streams nothing, so
tokens/s = generated tokens of the best hypotheses / wall time, summed over the prompts. After one
warm-up each, runs alternate (llmgen, HF, llmgen, HF, ...) so that drifts in machine load hit both;
each side's median is reported, and the ratio of the medians. Target: ratio >= 1.0.
Both sides use the same settings (length penalty 1, early stopping false, the model's EOS tokens);
the script says whether their best hypotheses are equal token for token.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from llmgen.decoding.beam import beam_search  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.sequence import token_budget  # noqa: E402
from llmgen.loading import models  # noqa: E402

PROMPTS = (
    ("chat", "Write a short story about a robot who learns to paint."),
    ("chat", "Explain how a bicycle stays upright."),
    ("raw", "The history of the printing press begins"),
)


def prompt_ids(loaded: models.LoadedModel, kind: str, text: str) -> list[int]:
    if kind == "raw":
        return list(loaded.tokenizer(text)["input_ids"])
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_llmgen(loaded: models.LoadedModel, ids: list[int], config: DecodingConfig) -> list[int]:
    budget = token_budget(len(ids), config, loaded.context_length)
    return beam_search(loaded.engine, ids, config, loaded.eos_token_ids, budget).hypotheses[0].token_ids


@torch.inference_mode()
def run_hf(loaded: models.LoadedModel, ids: list[int], config: DecodingConfig) -> list[int]:
    prompt = torch.tensor([ids], device=loaded.device)
    out = loaded.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                num_beams=config.num_beams, max_new_tokens=config.max_new_tokens,
                                length_penalty=config.length_penalty, early_stopping=False,
                                eos_token_id=sorted(loaded.eos_token_ids))
    tokens = out[0, len(ids):].tolist()
    ends = [i for i, t in enumerate(tokens) if t in loaded.eos_token_ids]
    return tokens[:ends[0] + 1] if ends else tokens


def timed(fn: Any, loaded: models.LoadedModel, prompts: list[list[int]],
          config: DecodingConfig) -> tuple[float, int, list[list[int]]]:
    """(seconds, generated tokens, outputs) for all prompts, one after another."""
    _sync(loaded.device)
    start = time.perf_counter()
    outputs = [fn(loaded, ids, config) for ids in prompts]
    _sync(loaded.device)
    return time.perf_counter() - start, sum(len(o) for o in outputs), outputs


def bench_beam(loaded: models.LoadedModel, num_beams: int = 4, max_new_tokens: int = 64,
               runs: int = 5) -> dict[str, Any]:
    """Median tokens/s of llmgen's and HF's beam search over `runs` interleaved runs, and the ratio."""
    config = DecodingConfig(num_beams=num_beams, temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = [prompt_ids(loaded, kind, text) for kind, text in PROMPTS]
    timed(run_llmgen, loaded, prompts, config)  # warm-up: kernels, allocator, caches
    timed(run_hf, loaded, prompts, config)
    ours: list[float] = []
    theirs: list[float] = []
    same = True
    for _ in range(runs):
        seconds, tokens, out_ours = timed(run_llmgen, loaded, prompts, config)
        ours.append(tokens / seconds)
        seconds, tokens, out_hf = timed(run_hf, loaded, prompts, config)
        theirs.append(tokens / seconds)
        same = same and out_ours == out_hf
    median_ours, median_hf = statistics.median(ours), statistics.median(theirs)
    return {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "runs": runs,
            "device": str(loaded.device), "dtype": str(loaded.dtype).replace("torch.", ""),
            "llmgen_tokens_per_second": round(median_ours, 2), "hf_tokens_per_second": round(median_hf, 2),
            "ratio": round(median_ours / median_hf, 3), "same_tokens": same,
            "llmgen_runs": [round(x, 2) for x in ours], "hf_runs": [round(x, 2) for x in theirs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--num-beams", type=int, default=4, help="default: 4")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default: 64")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side, at least 5 (default: 5)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args = parser.parse_args(argv)
    loaded = models.load(args.model, device=args.device)
    result = bench_beam(loaded, args.num_beams, args.max_new_tokens, max(5, args.runs))
    print(f"| beam B={result['num_beams']} ({result['device']}, {result['dtype']}, "
          f"{result['max_new_tokens']} new tokens) | tokens/s |")
    print("|---|---:|")
    print(f"| llmgen | {result['llmgen_tokens_per_second']:.1f} |")
    print(f"| HF generate() | {result['hf_tokens_per_second']:.1f} |")
    print(f"| ratio (target >= 1.0) | {result['ratio']:.2f}x |")
    print(f"same best hypotheses: {result['same_tokens']}; runs: llmgen {result['llmgen_runs']}, "
          f"HF {result['hf_runs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
