#!/usr/bin/env python
"""The benchmark behind docs/benchmarks.md: llmgen against HF generate() on the embedded model, in one process.

    python scripts/bench.py                      # everything, median of 5 interleaved runs (`make bench`)
    python scripts/bench.py --runs 1 --quick     # a quick check that it all works
    python scripts/bench.py --json docs/results/bench.json --plot docs/bench.png

Sections (each a Markdown table on stdout, ready for docs/benchmarks.md):
1. open prompts: llmgen plain greedy against HF greedy (the decode tokens/s ratio: target >= 1.0,
   aim 1.2), OpenAI penalties and what they do to repetition, the n-gram draft's cost where the
   answer is not in the prompt (target: <= 5%), and beam search B=4 against HF's.
2. grounded prompts: the n-gram draft (γ sweep) against plain decoding (target >= 3x) and HF prompt
   lookup (target >= 1.0x); the model draft `small` (γ sweep): acceptance, tokens per target forward,
   predicted and measured speedup, and HF assisted generation with the same draft.
   Then the n-gram draft alone on the two spelling-correction sets (`correct`, `proofread`), and
   `bound`: replays of the plain outputs that bound what any prompt-lookup draft can reach on them.
3. the roofline: memory bandwidth, the ceiling it puts on plain decoding, our fraction (target >= 60%).
4. load time from the safetensors cache against the first GGUF conversion, and peak RSS.

Everything here is built from `llmgen.bench`, which is also what `llmgen bench` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmgen.bench import contenders, loadtime, lookup_bound, plot, prompts, report, roofline, runner  # noqa: E402
from llmgen.bench.profile import profile_plain  # noqa: E402
from llmgen.bench.stats import peak_rss_bytes  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.loading import models  # noqa: E402

SWEEP = "1,2,3,4,5,6,8,auto"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="target model (default: %(default)s)")
    parser.add_argument("--draft", default="small", help="draft model for section 2 (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per configuration (default: 5)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--gamma", default=SWEEP, help=f"γ sweep for section 2 (default: {SWEEP})")
    parser.add_argument("--quick", action="store_true", help="γ 4 only, open-prompt beam and penalties off")
    parser.add_argument("--skip-load", action="store_true", help="skip section 4 (it converts the GGUF: ~25 s)")
    parser.add_argument("--json", type=Path, help="also write every number to this JSON file")
    parser.add_argument("--plot", type=Path, help="also write the PNG (needs matplotlib)")
    parser.add_argument("--sections", default="open,grounded,correct,proofread,bound,roofline,load",
                        help="which sections to run, of open, grounded, correct, proofread, bound, roofline, load, "
                             "profile "
                             "(default: %(default)s)")
    parser.add_argument("--strategies", default="plain,penalties,ngram,draft,beam",
                        help="only these strategies in every section (default: all)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    return parser.parse_args(argv)


def available(names: list[str], allowed: set[str]) -> list[str]:
    kept = []
    for name in names:
        if name not in allowed:
            continue
        why = contenders.available(name)
        if why:
            print(f"<!-- skipping {name}: {why} -->")
        else:
            kept.append(name)
    return kept


def progress(done: int, total: int, what: str) -> None:
    print(f"\r[{done}/{total}] {what[:70]:<70}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0


def paired_ratios(result: runner.Result, label: str) -> list[float]:
    """Per-prompt speed of row `label` over plain (run i of both reads prompt i)."""
    rows = {row.contender.label: row for row in result.rows}
    plain, row = rows.get("plain"), rows.get(label)
    if plain is None or row is None:
        return []
    return [r.decode_tps / p.decode_tps for r, p in zip(row.records, plain.records) if r.decode_tps and p.decode_tps]


def verdicts(open_result: runner.Result | None, grounded: list[runner.Result],
             roof: roofline.Roofline | None) -> list[str]:
    """One line per target of the issues, with the measured value."""
    lines = []

    def ratio(result: runner.Result, label: str, key: str) -> float | None:
        row = next((t for t in report.table_rows(result) if t.row.contender.label == label), None)
        return None if row is None else getattr(row, key)

    vs_hf = ratio(open_result, "plain", "vs_hf") if open_result else None
    if vs_hf is not None:
        lines.append(f"- llmgen plain / HF greedy: {vs_hf:.2f}× (target ≥ 1.0, aim 1.2)")
    for t in report.table_rows(open_result) if open_result else []:
        if t.row.contender.strategy == "ngram" and t.row.contender.engine == "llmgen" and t.vs_plain:
            lines.append(f"- {t.row.contender.label} on open prompts: {t.vs_plain:.2f}× plain (target ≥ 0.95)")
    for result in grounded:
        name = result.plan.prompt_sets[0].name
        for t in report.table_rows(result):
            c = t.row.contender
            if c.strategy == "ngram" and c.engine == "llmgen" and t.vs_plain:
                hf = f", {t.vs_hf:.2f}× HF prompt lookup (target ≥ 1.0)" if t.vs_hf else ""
                paired = paired_ratios(result, c.label)
                reached = sum(r >= 3.0 for r in paired)
                lines.append(f"- {c.label} on {name} prompts: {t.vs_plain:.2f}× plain (target ≥ 3){hf}; "
                             f"paired per prompt {geometric_mean(paired):.2f}×; "
                             f"≥ 3× on {reached} of {len(paired)} prompts (best {max(paired, default=0):.2f}×)")
    if roof is not None and roof.fraction is not None:
        lines.append(f"- plain decoding at {roof.fraction:.0%} of the memory-bandwidth ceiling (target ≥ 60%)")
    return lines


# The copy-heavy prompt sets of the n-gram sections, each run on all its prompts.
LOOKUP_SETS = {"correct": "Spelling-correction prompts",
               "proofread": "Proofreading prompts (long paragraphs: the answer fills the 128-token budget)"}


def lookup_bounds(target: models.LoadedModel, results: list[runner.Result], gammas: list) -> dict:
    """Replays of the plain runs' outputs (`lookup_bound`): llmgen's lookup at each fixed γ against
    the copy oracle, costed with v(k) measured now, next to the measured speedups."""
    first = results[0].plan.prompt_sets[0]
    clock = contenders.ForwardClock(target, runner.encode(target, first[0], None))
    ks = range(1, 18)
    samples = {k: [] for k in ks}
    for _ in range(6):  # interleaved; the first round is a warm-up; minimum of the rest
        for k in ks:
            samples[k].append(clock.seconds(k))
    v = {k: min(samples[k][1:]) / min(samples[1][1:]) for k in ks}
    lines = ["v(k), one target forward over k tokens relative to one token, measured now: "
             + ", ".join(f"{k}: {v[k]:.2f}" for k in ks) + "\n",
             "| prompts | draft | tok/fwd | predicted × plain (median) | measured × plain |", "|---|---|---|---|---|"]
    data: dict = {"v": v, "sets": {}}
    for result in results:
        prompt_set = result.plan.prompt_sets[0]
        plain = next(row for row in result.rows if row.contender.label == "plain")
        runs = [(runner.encode(target, prompt_set[i], None), record.token_ids)
                for i, record in enumerate(plain.records)]
        measured = {t.row.contender.label: t.vs_plain for t in report.table_rows(result)}
        drafts = [(f"ngram γ={g}", lookup_bound.lookup_draft(g, 4, 2)) for g in gammas if isinstance(g, int)]
        drafts.append(("copy oracle (≤ 16)", lookup_bound.copy_oracle(16)))
        data["sets"][prompt_set.name] = {}
        for label, draft in drafts:
            found = lookup_bound.bound(label, runs, draft, lambda k: v[min(k, 17)])
            seen = measured.get(label)
            lines.append(f"| {prompt_set.name} | {label} | {found.tokens_per_forward:.2f} | "
                         f"{found.median_speedup:.2f}× | {f'{seen:.2f}×' if seen else '—'} |")
            data["sets"][prompt_set.name][label] = {"tokens_per_forward": found.tokens_per_forward,
                                                    "predicted_median": found.median_speedup,
                                                    "per_prompt": found.per_run, "measured": seen}
    return {"markdown": lines, "json": data}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot:
        plot.require()
    sections = set(args.sections.split(","))
    allowed = set(args.strategies.split(",")) | {"plain"}
    gammas = [4] if args.quick else [g if g == "auto" else int(g) for g in args.gamma.split(",")]
    config = DecodingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    target = models.load(args.model, device=args.device)
    open_set, grounded_set = prompts.load("open"), prompts.load("grounded")
    out: dict = {}
    open_result = grounded = roof = None
    lookups: list[runner.Result] = []  # the n-gram draft on the copy-heavy sets: correct, proofread
    print("## Benchmark\n")

    if "open" in sections:
        wanted = ["plain"] if args.quick else ["plain", "penalties", "ngram", "beam"]
        plan = runner.Plan([open_set], available(wanted, allowed), ["auto"], runs=args.runs, baseline_hf=True)
        open_result = runner.run(target, config, plan, progress)
        print(report.markdown(open_result, title="Open prompts: llmgen against HF generate()"))
        out["open"] = report.as_json(open_result)

    strategies = available(["plain", "ngram", "draft"], allowed)
    if "grounded" in sections and len(strategies) > 1:
        drafts = [models.load(args.draft, device=args.device)] if "draft" in strategies else []
        plan = runner.Plan([grounded_set], strategies, gammas, drafts, runs=args.runs, baseline_hf=True)
        grounded = runner.run(target, config, plan, progress)
        print(report.markdown(grounded, title="Grounded prompts: speculative decoding, γ sweep"))
        out["grounded"] = report.as_json(grounded)

    for name, title in LOOKUP_SETS.items():
        if name not in sections or "ngram" not in strategies:
            continue
        prompt_set = prompts.load(name)
        # NOTE: all 10 prompts (run i reads prompt i): these sets are small and the n-gram runs are short.
        plan = runner.Plan([prompt_set], ["plain", "ngram"], gammas, runs=max(args.runs, len(prompt_set.prompts)),
                           baseline_hf=True)
        lookups.append(runner.run(target, config, plan, progress))
        print(report.markdown(lookups[-1], title=f"{title}: the n-gram draft, γ sweep"))
        out[name] = report.as_json(lookups[-1])

    if "bound" in sections and (grounded or lookups):
        print("### The ceiling of prompt lookup on these prompts\n")
        bounds = lookup_bounds(target, [r for r in (grounded, *lookups) if r], gammas)
        print("\n".join(bounds["markdown"]) + "\n")
        out["bound"] = bounds["json"]

    if "roofline" in sections:
        measured = open_result or grounded
        plain_row = next((t for t in report.table_rows(measured) if t.row.contender.label == "plain"),
                         None) if measured else None
        roof = roofline.measure(target.model, target.device,
                                plain_row.tps.median if plain_row and plain_row.tps else None)
        print("### Roofline: plain decoding against the memory-bandwidth limit\n")
        print("\n".join(report.roofline_markdown(roof)) + "\n")
        out["roofline"] = roof.as_json()

    if "profile" in sections:
        ids = runner.encode(target, open_set[0], None)
        found = profile_plain(target, ids, config.replace(ignore_eos=True))
        print(f"### Profile of plain decoding ({found['steps']} steps)\n")
        print(f"{found['ms_per_step']:.1f} ms per step ({found['tokens_per_second']:.1f} tok/s): "
              f"matrix products {found['matmul_share']:.0%}, other operators {found['other_ops_share']:.0%}, "
              f"outside operators (Python, dispatch) {found['outside_ops_share']:.0%}\n")
        print("```\n" + found["table"] + "\n```\n")
        out["profile"] = {k: v for k, v in found.items() if k != "table"}

    if open_result or grounded or lookups:
        print("### Verdicts\n")
        print("\n".join(verdicts(open_result, [r for r in (grounded, *lookups) if r], roof)) + "\n")

    if "load" in sections:
        times = loadtime.load_times(args.model)
        first, cached = times["first_load"], times["cached_load"]
        print("### Load time and memory\n")
        print("| load | seconds | peak RSS MB |\n|---|---|---|")
        print(f"| first run: GGUF → safetensors conversion, then load | {first['load_seconds']:.1f} "
              f"| {first['peak_rss_bytes'] / 1e6:.0f} |")
        print(f"| later runs: from the safetensors cache | {cached['load_seconds']:.2f} "
              f"| {cached['peak_rss_bytes'] / 1e6:.0f} |")
        out["load"] = times
    runs_peak = max((r.peak_rss_bytes for r in (open_result, grounded, *lookups) if r), default=peak_rss_bytes())
    print(f"\nPeak RSS of this benchmark process after its runs (target and draft loaded): {runs_peak / 1e6:.0f} MB.")
    out["peak_rss_bytes"] = runs_peak

    if args.json:
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.plot and (open_result or grounded):
        base = open_result or grounded
        merged = replace(base, rows=(open_result.rows if open_result else []) + (grounded.rows if grounded else []),
                         calibration=grounded.calibration if grounded else {})
        plot.write(merged, args.plot)
        print(f"\n![llmgen bench]({args.plot})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
