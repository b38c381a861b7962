"""The batch-size sweep: llmgen's batched decoding at 1, 2, 4, 8 and 16 rows, against HF `generate()` on the
same left-padded batches, with medians of runs that alternate between the sides (A B, B A, ...).
`llmgen bench --batch-sizes` and `scripts/bench_batch.py` both run it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmgen.bench.prompts import load as load_set
from llmgen.decoding.batch import Row, decode_rows, row_generator
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import encode_prompt
from llmgen.loading import models

SIZES = (1, 2, 4, 8, 16)


def prompts_of(loaded: models.LoadedModel, count: int, sets: tuple[str, ...] = ("open",)) -> list[list[int]]:
    """`count` prompts from the sets, cycled; from the second cycle on, a copy number is appended
    (" (2)", " (3)", ...) so that no two prompts are equal and none shares a prefill with another."""
    texts = [p for name in sets for p in load_set(name).prompts]
    return [encode_prompt(loaded, texts[i % len(texts)] + (f" ({i // len(texts) + 1})" if i >= len(texts) else ""),
                          None) for i in range(count)]


def clock(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(runs: int, sides: dict[str, Any]) -> dict[str, list[float]]:
    """Each side's tokens/s over `runs` rounds; sides alternate within a round, and the order flips
    every round (A B, B A, A B, ...). Each side is fn(run_index) -> generated tokens."""
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(runs):
        order = list(sides.items())
        for name, fn in (order if run % 2 == 0 else order[::-1]):
            seconds, tokens = clock(lambda: fn(run))
            rates[name].append(tokens / seconds)
    return rates


def summary(rates: dict[str, list[float]], ours: str, theirs: str) -> dict[str, Any]:
    med = {name: statistics.median(values) for name, values in rates.items()}
    return {"tokens_per_second": {k: round(v, 2) for k, v in med.items()},
            "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
            "ratio": round(med[ours] / med[theirs], 3) if theirs in med else None}


def sweep(loaded: models.LoadedModel, runs: int, with_hf: bool = True, sizes: Sequence[int] = SIZES,
          new: int = 16, count: int = 16) -> dict[str, Any]:
    """Throughput and mean per-row latency at each batch size (static batches over `count` prompts of the
    open, code and grounded sets, greedy, `new` tokens each, EOS ignored), against HF `generate()` on the
    same left-padded batches unless `with_hf` is False (an int4 model, which HF cannot run)."""
    prompts = prompts_of(loaded, count, ("open", "code", "grounded"))
    config = DecodingConfig(temperature=0, max_new_tokens=new, ignore_eos=True)
    pad = min(loaded.eos_token_ids)
    out = {}
    for size in sizes:
        latencies: dict[str, list[float]] = {"llmgen": [], "HF": []}

        def ours(_: int) -> int:
            start, finished = time.perf_counter(), []
            rows = [Row(i, p, config, row_generator(0, i)) for i, p in enumerate(prompts)]
            decode_rows(loaded.engine.rows(), rows, loaded.info, batch_size=size, continuous=False,
                        on_done=lambda row, result: finished.append(time.perf_counter() - start))
            latencies["llmgen"].append(statistics.mean(finished))
            return new * len(prompts)

        @torch.inference_mode()
        def hf(_: int) -> int:
            start, finished = time.perf_counter(), []
            for at in range(0, len(prompts), size):
                group = prompts[at:at + size]
                width = max(map(len, group))
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
                loaded.model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new,
                                      min_new_tokens=new, pad_token_id=pad)
                finished += [time.perf_counter() - start] * len(group)
            latencies["HF"].append(statistics.mean(finished))
            return new * len(prompts)

        sides = {"llmgen": ours, "HF": hf} if with_hf else {"llmgen": ours}
        result = summary(interleaved(runs, sides), "llmgen", "HF")
        result["mean_row_latency_seconds"] = {k: round(statistics.median(v), 3) for k, v in latencies.items() if v}
        out[str(size)] = result
    return out


def markdown(rows: dict[str, Any]) -> list[str]:
    """The sweep as a Markdown table."""
    lines = ["| batch size | llmgen tok/s | HF tok/s | × HF | llmgen mean row latency | HF |",
             "|---:|---:|---:|---:|---:|---:|"]
    for size, r in rows.items():
        t, lat = r["tokens_per_second"], r["mean_row_latency_seconds"]
        hf = (f"{t['HF']:.1f} | {r['ratio']:.2f}×", f"{lat['HF']:.2f} s") if "HF" in t else ("— | —", "—")
        lines.append(f"| {size} | {t['llmgen']:.1f} | {hf[0]} | {lat['llmgen']:.2f} s | {hf[1]} |")
    return lines


def plot_sweep(results: list[dict[str, Any]], path: Path) -> None:
    """Throughput against batch size, one line per engine and weights, from the results' sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4))
    for result in results:
        sweep = result["sections"].get("sweep")
        if not sweep:
            continue
        sizes = [int(size) for size in sweep]
        for engine in ("llmgen", "HF"):
            rates = [sweep[str(size)]["tokens_per_second"].get(engine) for size in sizes]
            if all(rate is not None for rate in rates):
                label = f"{engine}, {result.get('quant', 'none')} weights".replace("none weights", "float32")
                axes.plot(sizes, rates, marker="o", label=label)
    first = results[0]
    axes.set(xscale="log", xlabel="batch size (rows)", ylabel="tokens/s (all rows)",
             title=f"{first['model']}: throughput against batch size\n{first['cpu']}, {first['threads']} thread(s), "
                   f"{first['date'][:10]}")
    axes.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
