#!/usr/bin/env python
"""Batched decoding on the embedded model: llmgen's batch loop against HF `generate()` and against itself.

    python scripts/bench_batch.py                      # every section, medians of 3 alternating runs
    python scripts/bench_batch.py --sections n8,rss --runs 5 --json-out docs/results/bench-batch.json

Sections (medians over runs that alternate between the sides, A B, B A, ..., so that drifts in machine
load hit both; one short warm-up of every code path first):
- n8: `generate -n 8` (one prefill, 8 rows) against HF `generate(num_return_sequences=8)`, top-p 0.9,
  exactly 64 and 128 new tokens per row (EOS ignored by both: HF through min_new_tokens), one prompt of
  the open set per run. tokens/s = 8 x new tokens / wall time, prefill included.
- input: 32 prompts (the open set, cycled; chat template), top-p 0.9, up to 64 new tokens with EOS,
  at --batch-size 8 against the same prompts one at a time through the single-sequence loop. Each
  prompt has the same seeded stream on both sides, so both draw (nearly) the same samples.
- continuous: 32 prompts (the open, code and grounded sets), greedy, with mixed answer lengths (16 to
  128 tokens, EOS ignored), in continuous batches of 8 against static batches of 8 (a batch ends when
  its longest row ends).
- rss: peak resident memory of a fresh process decoding 8 open prompts x 128 tokens at batch 8 and at
  batch 1 (one process each: a peak does not drift like a rate).
- sweep: batch size 1, 2, 4, 8, 16 over 16 prompts (the open set, then 6 of the code set; greedy, 16 new
  tokens, EOS ignored): throughput and mean per-row latency, against HF `generate()` on the same
  left-padded batches. With `--quant int4` (the lean 4-bit Llama, which HF cannot run), llmgen only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from llmgen.bench.batch import interleaved, plot_sweep, prompts_of, summary, sweep  # noqa: E402
from llmgen.decoding.batch import Row, decode_rows, row_generator, sample_rows  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.generation import generate, stream  # noqa: E402
from llmgen.loading import models  # noqa: E402
from llmgen.loading.engines.torch import row_cache  # noqa: E402

SECTIONS = ("n8", "input", "continuous", "rss", "sweep")
SEED = 1234


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def warm_up(loaded: models.LoadedModel, with_hf: bool = True) -> None:
    """One short run of each code path, so that no measured run pays for first calls."""
    prompts = prompts_of(loaded, 2)
    config = DecodingConfig(top_p=0.9, max_new_tokens=4, seed=SEED)
    decode_rows(row_cache(loaded.model), [Row(i, p, config, row_generator(SEED, i)) for i, p in enumerate(prompts)],
                loaded.info)
    list(zip(range(4), stream(loaded, prompts[0], config, row_generator(SEED, 0))))
    if not with_hf:
        return
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9, top_k=0,
                              max_new_tokens=4, num_return_sequences=2, pad_token_id=min(loaded.eos_token_ids))


# --- sections ------------------------------------------------------------------------------------

def bench_n8(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompts = prompts_of(loaded, 10)  # the open set
    out = {}
    for new in (64, 128):
        config = DecodingConfig(top_p=0.9, n=8, max_new_tokens=new, ignore_eos=True, seed=SEED)

        def ours(run: int) -> int:
            results = sample_rows(row_cache(loaded.model), prompts[run % 10], config, loaded.info)
            return sum(len(r.token_ids) for r in results)

        @torch.inference_mode()
        def hf(run: int) -> int:
            ids = torch.tensor([prompts[run % 10]])
            gen = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.9,
                                        top_k=0, temperature=1.0, max_new_tokens=new, min_new_tokens=new,
                                        num_return_sequences=8, pad_token_id=min(loaded.eos_token_ids))
            return int(gen[:, ids.shape[1]:].numel())

        out[str(new)] = summary(interleaved(runs, {"llmgen -n 8": ours, "HF num_return_sequences=8": hf}),
                                "llmgen -n 8", "HF num_return_sequences=8")
    return out


def bench_input(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompts = prompts_of(loaded, 32)
    config = DecodingConfig(top_p=0.9, max_new_tokens=64, seed=SEED)

    def batched(run: int) -> int:
        rows = [Row(i, p, config, row_generator(SEED, i)) for i, p in enumerate(prompts)]
        done: list[int] = []
        decode_rows(row_cache(loaded.model), rows, loaded.info, batch_size=8,
                    on_done=lambda row, result: done.append(len(result.token_ids)))
        return sum(done)

    def one_at_a_time(run: int) -> int:
        total = 0
        for i, p in enumerate(prompts):
            total += len(generate(loaded, p, config, generator=row_generator(SEED, i)).token_ids)
        return total

    return summary(interleaved(runs, {"batch 8": batched, "one at a time": one_at_a_time}),
                   "batch 8", "one at a time")


def mixed_lengths(count: int) -> list[int]:
    rng = random.Random(0)
    return [rng.choice((16, 32, 64, 128)) for _ in range(count)]


def bench_continuous(loaded: models.LoadedModel, runs: int) -> dict[str, Any]:
    prompts = prompts_of(loaded, 32, ("open", "code", "grounded"))
    lengths = mixed_lengths(32)

    def side(continuous: bool) -> Any:
        def run(_: int) -> int:
            rows = [Row(i, p, DecodingConfig(temperature=0, max_new_tokens=n, ignore_eos=True), row_generator(0, i))
                    for i, (p, n) in enumerate(zip(prompts, lengths))]
            decode_rows(row_cache(loaded.model), rows, loaded.info, batch_size=8, continuous=continuous)
            return sum(lengths)
        return run

    out = summary(interleaved(runs, {"continuous": side(True), "static": side(False)}), "continuous", "static")
    out["answer_lengths"] = lengths
    return out


def rss_child(batch_size: int, model: str) -> None:
    """Run in a fresh process: decode 8 prompts x 128 tokens at `batch_size`; print the peak RSS in MiB."""
    loaded = models.load(model)
    prompts = prompts_of(loaded, 8)
    config = DecodingConfig(temperature=0, max_new_tokens=128, ignore_eos=True)
    rows = [Row(i, p, config, row_generator(0, i)) for i, p in enumerate(prompts)]
    decode_rows(row_cache(loaded.model), rows, loaded.info, batch_size=batch_size)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_rss(model: str, threads: int) -> dict[str, Any]:
    peaks: dict[str, list[float]] = {"batch 8": [], "batch 1": []}
    for _ in range(1):  # NOTE: a peak is a peak: one run of each, each in a fresh process
        for size in (8, 1):
            cmd = [sys.executable, __file__, "--rss-child", str(size), "--model", model, "--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            peaks[f"batch {size}"].append(float(out[-1]))
    med = {k: statistics.median(v) for k, v in peaks.items()}
    return {"peak_rss_mib": {k: round(v, 1) for k, v in med.items()},
            "runs": peaks, "ratio": round(med["batch 8"] / med["batch 1"], 3)}


# --- report --------------------------------------------------------------------------------------

def report(result: dict[str, Any]) -> str:
    lines = [f"batched decoding, {result['model']} ({result['quant']}) on {result['cpu']} ({result['threads']} torch threads), "
             f"{result['date']}, torch {result['torch']}, transformers {result['transformers']}", ""]
    s = result["sections"]
    if "n8" in s:
        for new, r in s["n8"].items():
            t = r["tokens_per_second"]
            lines.append(f"-n 8, {new} new tokens: llmgen {t['llmgen -n 8']:.1f} tok/s, HF num_return_sequences=8 "
                         f"{t['HF num_return_sequences=8']:.1f} tok/s, ratio {r['ratio']:.2f}x (target >= 1.0)")
    if "input" in s:
        t = s["input"]["tokens_per_second"]
        lines.append(f"--input 32 prompts: batch 8 {t['batch 8']:.1f} tok/s, one at a time {t['one at a time']:.1f} "
                     f"tok/s, ratio {s['input']['ratio']:.2f}x (target >= 3)")
    if "continuous" in s:
        t = s["continuous"]["tokens_per_second"]
        lines.append(f"continuous vs static batches of 8, mixed lengths: {t['continuous']:.1f} vs {t['static']:.1f} "
                     f"tok/s, ratio {s['continuous']['ratio']:.2f}x (target >= 1.2)")
    if "rss" in s:
        r = s["rss"]
        lines.append(f"peak RSS: batch 8 {r['peak_rss_mib']['batch 8']:.0f} MiB, batch 1 "
                     f"{r['peak_rss_mib']['batch 1']:.0f} MiB, ratio {r['ratio']:.2f}x (target <= 1.5)")
    if "sweep" in s:
        lines += ["", "| batch size | llmgen tok/s | HF tok/s | ratio | llmgen mean row latency | HF |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for size, r in s["sweep"].items():
            t, lat = r["tokens_per_second"], r["mean_row_latency_seconds"]
            hf = (f"{t['HF']:.1f} | {r['ratio']:.2f}x", f"{lat['HF']:.2f} s") if "HF" in t else ("- | -", "-")
            lines.append(f"| {size} | {t['llmgen']:.1f} | {hf[0]} | {lat['llmgen']:.2f} s | {hf[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of: " + ", ".join(SECTIONS))
    parser.add_argument("--runs", type=int, default=3, help="measured runs per side (default: 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: 1; on a shared machine more can stall a step)")
    parser.add_argument("--quant", default="none", choices=("none", "int4"),
                        help="the model's weights (default: none); with int4 only the sweep runs, without HF")
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="also draw the sweep (throughput against batch size) as a PNG")
    parser.add_argument("--plot-from", type=Path, nargs="+", metavar="JSON",
                        help="only draw --plot from saved --json-out files, without measuring")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot FILE.png")
        plot_sweep([json.loads(path.read_text()) for path in args.plot_from], args.plot)
        return 0
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, args.model)
        return 0
    wanted = [s for s in args.sections.split(",") if s]
    if args.quant == "int4" and wanted != ["sweep"]:
        parser.error("--quant int4 runs the sweep only: add --sections sweep (HF cannot run the int4 model)")
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    loaded = models.load(args.model, quant=args.quant)
    import transformers

    result: dict[str, Any] = {
        "model": args.model, "quant": args.quant, "cpu": cpu_model(), "threads": args.threads, "runs": args.runs,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "transformers": transformers.__version__, "sections": {}}
    warm_up(loaded, with_hf=args.quant != "int4")
    for section in wanted:
        started = time.perf_counter()
        if section == "n8":
            result["sections"]["n8"] = bench_n8(loaded, args.runs)
        elif section == "input":
            result["sections"]["input"] = bench_input(loaded, args.runs)
        elif section == "continuous":
            result["sections"]["continuous"] = bench_continuous(loaded, args.runs)
        elif section == "rss":
            result["sections"]["rss"] = bench_rss(args.model, args.threads)
        elif section == "sweep":
            result["sections"]["sweep"] = sweep(loaded, args.runs, with_hf=args.quant != "int4")
        print(f"[{section}: {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    print(report(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot_sweep([result], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
