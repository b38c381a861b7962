"""Turning a benchmark result into rows of numbers, then into Markdown, a Rich table or JSON.

`table_rows` computes every derived number once (ratios, predicted speedups); the renderers only
format. Ratios are of medians: `× plain` = this row's decode tokens/s over llmgen plain decoding's on
the same prompt set, `× HF` = a llmgen row's over its HF `generate()` twin's.

A speculative row also shows its γ choices (`γ chosen`: the share of rounds that were plain steps, γ = 0,
and the mean γ of the others) and, with `--gamma auto`, the speedup the policy expected (`γ auto exp.`,
`gamma.Expectation`), to read against the realised one, `× plain`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

from llmgen.bench.roofline import Roofline
from llmgen.bench.runner import Result, Row, predicted_speedup
from llmgen.bench.stats import Summary

MB = 1e6


@dataclass
class TableRow:
    row: Row
    tps: Summary | None
    ttft: Summary | None
    prefill: Summary | None
    peak: Summary | None
    generated: Summary | None
    vs_plain: float | None
    vs_hf: float | None
    acceptance: Summary | None
    per_forward: Summary | None
    predicted: float | None
    same_as_twin: str | None  # "k/n" runs whose tokens equal the twin's (greedy rows)
    quality: dict[str, Summary | None]
    vs_llamacpp: float | None = None  # speed over the llama.cpp row that names this row as its twin
    kl: float | None = None  # mean KL(float || this row) on the corpus, for int4 rows (`evaluate.divergence.corpus_kl`)
    gammas: list[int] | None = None  # rounds per proposed γ (0: plain steps), over all runs
    expected: Summary | None = None  # γ = auto: the speedup its policy expected, per run


def twin_key(row: Row) -> str:
    """The key an HF row's `twin` names for this llmgen row."""
    c = row.contender
    tag = f" · {c.label.rsplit(' · ', 1)[1]}" if " · " in c.label else ""  # the engine, with several
    if c.strategy == "ngram":
        return "ngram" + tag
    if c.strategy == "draft":
        return f"draft {c.draft}{tag}"
    return c.label


def _ratio(a: Summary | None, b: Summary | None) -> float | None:
    return a.median / b.median if a and b and b.median > 0 else None


def table_rows(result: Result) -> list[TableRow]:
    out = []
    by_set: dict[str, list[Row]] = {}
    for row in result.rows:
        by_set.setdefault(row.prompt_set, []).append(row)
    for rows in by_set.values():
        plain = next((r for r in rows if r.contender.strategy == "plain" and r.contender.engine == "llmgen"), None)
        plain_tps = plain.summary("decode_tps") if plain else None
        hf_rows = {r.contender.twin: r for r in rows if r.contender.engine == "hf"}
        llamacpp_rows = {r.contender.twin: r for r in rows if r.contender.engine == "llamacpp"}
        for row in rows:
            tps = row.summary("decode_tps")
            twin = hf_rows.get(twin_key(row)) if row.contender.engine == "llmgen" else None
            llamacpp = llamacpp_rows.get(twin_key(row)) if row.contender.engine == "llmgen" else None
            acceptance = row.extra_summary("acceptance_rate")
            out.append(TableRow(
                row, tps, row.summary("ttft_s"), row.summary("prefill_tps"), row.summary("peak_bytes"),
                row.summary("generated_tokens"), _ratio(tps, plain_tps),
                _ratio(tps, twin.summary("decode_tps")) if twin else None, acceptance,
                row.extra_summary("tokens_per_target_forward"), _predicted(result, row, acceptance),
                _same(row, twin) if twin and result.config.greedy else None, row.quality(),
                _ratio(tps, llamacpp.summary("decode_tps")) if llamacpp else None,
                result.kl.get(row.contender.label) if row.contender.engine == "llmgen" else None,
                _gammas(row), row.extra_summary("expected_speedup")))
    return out


def _predicted(result: Result, row: Row, acceptance: Summary | None) -> float | None:
    c = row.contender
    if c.strategy != "draft" or c.engine != "llmgen" or not isinstance(c.gamma, int) or acceptance is None:
        return None
    calibration = result.calibration
    try:
        cost = calibration["drafts"][c.draft]["c"]
        v = calibration["target"]["v"][c.gamma + 1]
    except KeyError:
        return None
    return predicted_speedup(acceptance.median, c.gamma, cost, v)


def _gammas(row: Row) -> list[int] | None:
    """Rounds per proposed γ over the row's runs (`SpeculativeStats.gammas`); None for other rows."""
    total: list[int] = []
    for record in row.records:
        for g, count in enumerate(record.extra.get("gamma_histogram") or []):
            total.extend([0] * (g + 1 - len(total)))
            total[g] += count
    return total or None


def gamma_choice(gammas: list[int] | None) -> str | None:
    """'83% γ=0, mean 2.4': the share of plain rounds, and the mean γ of the rounds that proposed."""
    if not gammas or not sum(gammas):
        return None
    proposing = sum(gammas[1:])
    mean = sum(g * count for g, count in enumerate(gammas)) / proposing if proposing else 0.0
    return f"{gammas[0] / sum(gammas):.0%} γ=0, mean {mean:.1f}"


def _same(row: Row, twin: Row) -> str | None:
    pairs = list(zip(row.records, twin.records))
    if not pairs:
        return None
    return f"{sum(a.token_ids == b.token_ids for a, b in pairs)}/{len(pairs)}"


# --- the machine ---------------------------------------------------------------------------------

def machine(device: torch.device) -> str:
    """One line: the processor (or GPU), cores, threads and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers

    where = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} ({where})"
    return f"{where}; torch {torch.__version__}, transformers {transformers.__version__}"


def today() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- formatting ----------------------------------------------------------------------------------

def _f(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def _span(s: Summary | None, pattern: str = "{:.1f}") -> str:
    if s is None:
        return "—"
    if s.n == 1 or s.min == s.max:
        return pattern.format(s.median)
    return f"{pattern.format(s.median)} ({pattern.format(s.min)}–{pattern.format(s.max)})"


HEADERS = ("prompts", "strategy", "decode tok/s (min–max)", "× plain", "× HF", "× llama.cpp", "TTFT ms", "prefill tok/s",
           "peak MB", "α", "tok/fwd", "γ chosen", "γ auto exp.", "speedup pred", "distinct-2", "distinct-3",
           "rep. 3-grams", "KL vs float")


def cells(t: TableRow) -> list[str]:
    q = t.quality
    return [
        t.row.prompt_set, t.row.contender.label, _span(t.tps), _f(t.vs_plain, "{:.2f}×"), _f(t.vs_hf, "{:.2f}×"),
        _f(t.vs_llamacpp, "{:.2f}×"),
        _f(t.ttft.median * 1000 if t.ttft else None, "{:.0f}"), _f(t.prefill.median if t.prefill else None, "{:.0f}"),
        _f(t.peak.max / MB if t.peak else None, "{:.0f}"), _f(t.acceptance.median if t.acceptance else None, "{:.2f}"),
        _f(t.per_forward.median if t.per_forward else None, "{:.2f}"), gamma_choice(t.gammas) or "—",
        _f(t.expected.median if t.expected else None, "{:.2f}×"), _f(t.predicted, "{:.2f}×"),
        *(_f(m.median if (m := q[k]) else None, "{:.2f}") for k in ("distinct_2", "distinct_3", "repeated_3gram_rate")),
        _f(t.kl, "{:.2g}"),
    ]


def markdown(result: Result, roofline: Roofline | None = None, title: str | None = None) -> str:
    """A Markdown section for the README: the setup, the table, the roofline and notes."""
    rows = table_rows(result)
    config, plan, loaded = result.config, result.plan, result.model
    mode = "greedy" if config.greedy else f"temperature {config.temperature:g}"
    lines = [f"### {title or 'llmgen bench'}", "",
             f"{today()} · {machine(loaded.device)} · model `{loaded.ref}` ({str(loaded.dtype).removeprefix('torch.')}"
             f", {loaded.device}) · {mode}, {config.max_new_tokens} new tokens, {'chat' if plan.chat is not False else 'raw'}"
             f" · median of {plan.runs} interleaved runs after {plan.warmup} warm-up", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cells(t)) + " |" for t in rows]
    notes = [f"- {t.row.contender.label} on {t.row.prompt_set}: HF output identical to llmgen's in "
             f"{t.same_as_twin} runs" for t in rows if t.same_as_twin]
    notes += [f"- {r.contender.label} on {r.prompt_set}: {r.note}" for r in result.rows if r.note]
    if any(t.row.contender.strategy == "beam" for t in rows):
        notes.append("- beam rows: end-to-end tokens/s (beam search streams nothing before it ends)")
    if roofline:
        lines += ["", *roofline_markdown(roofline)]
    if notes:
        lines += ["", *notes]
    lines += ["", f"Peak RSS of the benchmark process after its runs: {result.peak_rss_bytes / MB:.0f} MB."]
    return "\n".join(lines) + "\n"


def roofline_markdown(r: Roofline) -> list[str]:
    return ["| memory read GB/s | GEMV GB/s | weight MB/token | ceiling tok/s | llmgen plain tok/s | fraction |",
            "|---|---|---|---|---|---|",
            f"| {r.bandwidth_gbps:.1f} | {r.gemv_gbps:.1f} | {r.weight_bytes_per_token / MB:.3g} | {r.ceiling_tps:.1f} "
            f"| {_f(r.measured_tps, '{:.1f}')} | {_f(r.fraction, '{:.0%}')} |"]


def rich_table(result: Result, roofline: Roofline | None = None) -> list[Any]:
    """Rich renderables for a terminal."""
    from rich.table import Table

    table = Table(title=f"llmgen bench · {result.model.ref} · {machine(result.model.device)}", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("prompts", "strategy") else "right")
    for t in table_rows(result):
        table.add_row(*cells(t), style="dim" if t.row.contender.engine != "llmgen" else None)
    out: list[Any] = [table]
    if roofline:
        roof = Table(title="roofline: plain decoding against the memory-bandwidth limit", title_justify="left")
        headers = roofline_markdown(roofline)[0].strip("| ").split(" | ")
        values = roofline_markdown(roofline)[2].strip("| ").split(" | ")
        for header in headers:
            roof.add_column(header, justify="right")
        roof.add_row(*values)
        out.append(roof)
    return out


def as_json(result: Result, roofline: Roofline | None = None) -> dict[str, Any]:
    loaded, plan = result.model, result.plan

    def s(summary: Summary | None, digits: int = 4) -> dict[str, Any] | None:
        return None if summary is None else summary.as_json(digits)

    rows: list[dict[str, Any]] = []
    for t in table_rows(result):
        c = t.row.contender
        rows.append({
            "prompt_set": t.row.prompt_set, "label": c.label, "strategy": c.strategy, "engine": c.engine,
            "gamma": c.gamma, "draft": c.draft, "twin": c.twin, "settings": c.settings,
            "decode_tokens_per_second": s(t.tps, 3), "ttft_seconds": s(t.ttft, 5),
            "prefill_tokens_per_second": s(t.prefill, 2), "peak_memory_bytes": s(t.peak, 0),
            "generated_tokens": s(t.generated, 1),
            "ratio_to_plain": None if t.vs_plain is None else round(t.vs_plain, 4),
            "ratio_to_hf": None if t.vs_hf is None else round(t.vs_hf, 4),
            "ratio_to_llamacpp": None if t.vs_llamacpp is None else round(t.vs_llamacpp, 4),
            "acceptance_rate": s(t.acceptance), "tokens_per_target_forward": s(t.per_forward),
            "predicted_speedup": None if t.predicted is None else round(t.predicted, 4),
            "gamma_histogram": t.gammas, "gamma_choice": gamma_choice(t.gammas),
            "expected_speedup": s(t.expected),
            "measured_speedup": None if t.vs_plain is None or c.strategy not in ("ngram", "suffix", "draft", "cross")
            else round(t.vs_plain, 4),
            "same_tokens_as_twin": t.same_as_twin,
            "quality": {k: s(v) for k, v in t.quality.items()},
            "kl_vs_float": t.kl,
            "note": t.row.note,
            "runs": [{"prompt_tokens": r.prompt_tokens, "generated_tokens": r.generated_tokens,
                      "ttft_seconds": r.ttft_s, "decode_tokens_per_second": r.decode_tps,
                      "total_seconds": round(r.total_s, 5), "peak_memory_bytes": r.peak_bytes, **r.extra}
                     for r in t.row.records],
        })
    return {
        "date": today(), "machine": machine(loaded.device),
        "model": {"ref": loaded.ref, "path": str(loaded.path), "device": str(loaded.device), "quant": loaded.quant,
                  "dtype": str(loaded.dtype).removeprefix("torch."), "load_seconds": round(loaded.load_seconds, 3)},
        "settings": {**rows[0]["settings"]} if rows else {},
        "plan": {"prompt_sets": [p.name for p in plan.prompt_sets], "strategies": list(plan.strategies),
                 "gammas": list(plan.gammas), "drafts": [d.ref for d in plan.drafts], "runs": plan.runs,
                 "warmup": plan.warmup, "baseline": "hf" if plan.baseline_hf else None,
                 "baseline_llamacpp": plan.llamacpp_gguf,
                 "num_beams": plan.num_beams},
        "rows": rows,
        "calibration": result.calibration,
        "roofline": roofline.as_json() if roofline else None,
        "peak_rss_bytes": result.peak_rss_bytes,
    }
