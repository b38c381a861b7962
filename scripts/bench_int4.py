#!/usr/bin/env python
"""The int4 benchmark (issue: 4-bit weights on the CPU), in one process, side by side:

    python scripts/bench_int4.py                   # everything, median of 5 interleaved runs
    python scripts/bench_int4.py --runs 1 --quick  # a quick check that it all works
    python scripts/bench_int4.py --json docs/results/bench-int4.json

Sections (Markdown on stdout):
1. greedy, 128 new tokens, open and grounded prompts: plain float32, `--quant int4`, llama.cpp on the
   same GGUF (when llama-cpp-python is installed), `speculate --draft small` at γ=5 and γ=auto.
2. sampling (temperature 1, top-p 0.9): plain against `--draft small` at γ=auto.
3. the int4 draft's acceptance against the float target and its step cost c (a draft step over a target step).
4. teacher-forced greedy agreement of int4 with float32: the float run's tokens read by the int4 model;
   the share of positions whose argmax agrees.
5. load time from the caches and peak RSS of a 128-token greedy run, each in a fresh process,
   interleaved, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from llmgen.bench import contenders, loadtime, prompts, report, runner  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.loading import models  # noqa: E402

MB = 1024 * 1024


def progress(done: int, total: int, what: str) -> None:
    print(f"\r[{done}/{total}] {what[:70]:<70}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def agreement(target: models.LoadedModel, int4: models.LoadedModel, result: runner.Result) -> dict:
    """Teacher forcing: every plain float run's prompt + output, read in one forward by both models; the
    share of generated positions where the int4 argmax equals the float argmax (and the float token)."""
    plain = next(row for row in result.rows if row.contender.label == "plain")
    same = total = 0
    per_prompt = []
    for i, record in enumerate(plain.records):
        ids = runner.encode(target, result.plan.prompt_sets[0][i], None)
        sequence = ids + record.token_ids
        if not record.token_ids:
            continue
        positions = slice(len(ids) - 1, len(sequence) - 1)
        with torch.inference_mode():
            a = target.engine.sequence().forward(sequence, all_logits=True)[positions].argmax(-1)
            b = int4.engine.sequence().forward(sequence, all_logits=True)[positions].argmax(-1)
        agree = int((a == b).sum())
        per_prompt.append(agree / len(a))
        same += agree
        total += len(a)
    return {"positions": total, "agreement": same / total if total else None, "per_prompt": per_prompt}


def fresh_processes(ref: str, runs: int) -> dict:
    """Load time (from the caches) and peak RSS of a 128-token greedy run, fp32 and int4 interleaved."""
    loadtime.cached_run(ref, "none")  # make sure both caches exist
    loadtime.cached_run(ref, "int4")
    out: dict = {"none": [], "int4": []}
    for _ in range(runs):
        for quant in ("none", "int4"):
            out[quant].append(loadtime.cached_run(ref, quant, generate=128))
    return {quant: {"load_seconds": statistics.median(r["load_seconds"] for r in rows),
                    "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in rows), "runs": rows}
            for quant, rows in out.items()}


def row(result: runner.Result, label: str) -> report.TableRow | None:
    return next((t for t in report.table_rows(result) if t.row.contender.label == label), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="grounded prompts only, no sampling section")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (and llama.cpp's); default: torch's own")
    parser.add_argument("--draft", default="small", help="the int4 draft (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    target = models.load(args.model)
    int4 = models.load(args.model, quant="int4")
    small = models.load(args.draft)
    resolved = models.resolve(args.model)
    gguf = resolved.location if resolved.kind == "gguf" else None
    greedy = DecodingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    llama = None if contenders.llamacpp_unavailable(target, greedy, gguf) else gguf
    if llama is None:
        print(f"<!-- no llama.cpp row: {contenders.llamacpp_unavailable(target, greedy, gguf)} -->")
    out: dict = {"machine": report.machine(target.device), "date": report.today()}
    lines = [f"{out['date']} · {out['machine']}", ""]
    verdicts: list[str] = []

    sets = ["grounded"] if args.quick else ["open", "grounded"]
    for name in sets:
        plan = runner.Plan([prompts.load(name)], ["plain", "int4", "draft"], [5, "auto"], [small], runs=args.runs,
                           int4=int4, llamacpp_gguf=llama)
        result = runner.run(target, greedy, plan, progress)
        print(report.markdown(result, title=f"{name} prompts, greedy: float32, int4, llama.cpp, the int4 draft"))
        out[name] = report.as_json(result)
        out[f"{name}_agreement"] = agreement(target, int4, result)
        for label, target_ratio in (("plain int4", "≥ 2.5× plain (aim 5×)"), ("draft small γ=5", "≥ 1.4× (aim 1.8×)"),
                                    ("draft small γ=auto", "≥ 1.5× (aim 2×)")):
            t = row(result, label)
            if t and t.vs_plain:
                verdicts.append(f"- {name}: {label}: {t.vs_plain:.2f}× plain float32 (target {target_ratio})")
        t = row(result, "plain int4")
        if t and t.vs_llamacpp:
            verdicts.append(f"- {name}: plain int4: {t.vs_llamacpp:.2f}× llama.cpp on the same file (target ≥ 0.6×, "
                            "aim ≥ 1.0×)")
        a = out[f"{name}_agreement"]
        verdicts.append(f"- {name}: teacher-forced greedy agreement of int4 with float32: {a['agreement']:.1%} "
                        f"of {a['positions']} positions")
        calibration = result.calibration.get("drafts", {}).get("small")
        if calibration:
            verdicts.append(f"- {name}: the int4 draft's step cost c = {calibration['c']:.3f} of a float32 step")

    if not args.quick:
        sampling = DecodingConfig(temperature=1.0, top_p=0.9, max_new_tokens=args.max_new_tokens, seed=0)
        plan = runner.Plan([prompts.load("grounded")], ["plain", "draft"], ["auto"], [small], runs=args.runs)
        result = runner.run(target, sampling, plan, progress)
        print(report.markdown(result, title="grounded prompts, temperature 1, top-p 0.9: plain against the int4 draft"))
        out["sampling"] = report.as_json(result)
        t = row(result, "draft small γ=auto")
        if t and t.vs_plain:
            verdicts.append(f"- sampling T=1 top-p 0.9: draft small γ=auto: {t.vs_plain:.2f}× plain (target ≥ 1.3×)")

    processes = fresh_processes(args.model, max(1, min(args.runs, 3)))
    out["processes"] = processes
    none, four = processes["none"], processes["int4"]
    print("### Load time and peak RSS (fresh processes, 128 greedy tokens, medians)\n")
    print("| weights | cached load s | peak RSS MB |\n|---|---|---|")
    for quant, data in processes.items():
        print(f"| {quant} | {data['load_seconds']:.2f} | {data['peak_rss_bytes'] / MB:.0f} |")
    print()
    verdicts.append(f"- peak RSS: int4 {four['peak_rss_bytes'] / MB:.0f} MB = "
                    f"{four['peak_rss_bytes'] / none['peak_rss_bytes']:.0%} of float32 (aim ≤ 40%)")
    verdicts.append(f"- cached load: int4 {four['load_seconds']:.2f} s, float32 {none['load_seconds']:.2f} s "
                    "(target: int4 not slower)")
    print("### Verdicts\n")
    print("\n".join(lines + verdicts))
    out["verdicts"] = verdicts
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
