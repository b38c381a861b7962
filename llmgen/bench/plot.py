"""`--plot FILE.png`: decode tokens/s by strategy, and speedup against γ for each draft.

matplotlib is an optional extra (`pip install 'llmgen[plot]'`); without it, `write` raises a
UsageError that says how to install it, before any benchmark runs (`require()`).
"""

from __future__ import annotations

from pathlib import Path

from llmgen.bench.report import table_rows
from llmgen.bench.runner import Result
from llmgen.errors import UsageError

INSTALL = "--plot needs matplotlib: pip install 'llmgen[plot]' (or pip install matplotlib)"


def require() -> None:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise UsageError(INSTALL) from None


def write(result: Result, path: Path) -> None:
    require()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = table_rows(result)
    sets = list(dict.fromkeys(t.row.prompt_set for t in rows))
    sweeps: dict[tuple[str, str], list[tuple[int, float]]] = {}
    auto: dict[tuple[str, str], float] = {}  # γ=auto, drawn as a star right of the largest γ
    for t in rows:
        c = t.row.contender
        if c.engine == "llmgen" and c.strategy in ("ngram", "suffix", "draft") and t.vs_plain:
            name = c.strategy if c.strategy != "draft" else f"draft {c.draft}"
            if c.gamma == "auto":
                auto[(t.row.prompt_set, name)] = t.vs_plain
            else:
                sweeps.setdefault((t.row.prompt_set, name), []).append((int(str(c.gamma)), t.vs_plain))
    for key in auto:
        sweeps.setdefault(key, [])

    figure, axes = plt.subplots(1, 2 if sweeps else 1, figsize=(13 if sweeps else 8, 5), squeeze=False)
    bars = axes[0][0]
    labels = list(dict.fromkeys(t.row.contender.label for t in rows))
    width = 0.8 / max(1, len(sets))
    for index, name in enumerate(sets):
        values = {t.row.contender.label: t for t in rows if t.row.prompt_set == name}
        xs, heights, low, high = [], [], [], []
        for position, label in enumerate(labels):
            found = values.get(label)
            if found is None or found.tps is None:
                continue
            xs.append(position + (index - (len(sets) - 1) / 2) * width)
            heights.append(found.tps.median)
            low.append(found.tps.median - found.tps.min)
            high.append(found.tps.max - found.tps.median)
        bars.bar(xs, heights, width, yerr=[low, high], capsize=3, label=name)
    bars.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    bars.set_ylabel("decode tokens/s (median, min–max)")
    bars.set_title(f"{result.model.ref}: tokens/s by strategy")
    bars.legend(title="prompts")
    if sweeps:
        sweep = axes[0][1]
        gammas = sorted({g for points in sweeps.values() for g, _ in points})
        auto_x = (gammas[-1] if gammas else 0) + 1
        for (name, draft), points in sorted(sweeps.items()):
            points.sort()
            line = sweep.plot([g for g, _ in points], [s for _, s in points], marker="o", label=f"{draft} ({name})")
            if (name, draft) in auto:
                sweep.plot([auto_x], [auto[(name, draft)]], marker="*", markersize=12, linestyle="none",
                           color=line[0].get_color())
        ticks = gammas + ([auto_x] if auto else [])
        sweep.set_xticks(ticks, [str(g) for g in gammas] + (["auto"] if auto else []))
        sweep.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        sweep.set_xlabel("γ (draft tokens per round)")
        sweep.set_ylabel("speedup over plain decoding")
        sweep.set_title("speculative decoding: speedup against γ")
        sweep.legend()
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=120)
    except OSError as err:
        raise UsageError(f"--plot: cannot write {path}: {err}") from None
    finally:
        plt.close(figure)
