"""`llmgen inspect`: the decoding chain at work on the user's own model and prompt (`inspection.py`)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from llmgen.cli import common
from llmgen.cli.options import (
    BEAM,
    MODEL,
    OUTPUT,
    SAMPLING,
    DecodingFlags,
    ModelOptions,
    OutputOptions,
    PromptArg,
    group,
    option,
    with_options,
)
from llmgen.errors import UsageError

if TYPE_CHECKING:
    from llmgen.decoding.inspection import StepView

PANEL = "Inspect"


@dataclass(frozen=True)
class InspectOptions:
    top: int = 15
    steps: int = 1
    continue_text: str | None = None
    plot: Path | None = None



INSPECT = group(InspectOptions, [
    option("top", Annotated[int, typer.Option(
        "--top", metavar="N", min=1, rich_help_panel=PANEL,
        help="Candidates shown: the N most likely under the raw distribution (and the chosen token).")], 15),
    option("steps", Annotated[int, typer.Option(
        "--steps", metavar="K", min=1, rich_help_panel=PANEL,
        help="Positions to show: each step picks a token (greedy, or sampled with the sampling options and "
             "--seed) and moves on.")], 1),
    option("continue_text", Annotated[str | None, typer.Option(
        "--continue", metavar="TEXT", rich_help_panel=PANEL, show_default="none",
        help="Append TEXT's tokens after the prompt first, as if generated, to look at the position after it.")],
        None),
    option("plot", Annotated[Path | None, typer.Option(
        "--plot", metavar="FILE", rich_help_panel=PANEL, show_default="none",
        help="Also write a PNG of the first step: one bar chart per stage (needs the extra llmgen\\[plot]: "
             "matplotlib).")], None),
])


@with_options(own=INSPECT, sampling=SAMPLING, beams=BEAM, model_opts=MODEL, output=OUTPUT)
def inspect(prompt: PromptArg = None, *, own: InspectOptions, sampling: DecodingFlags, beams: DecodingFlags,
             model_opts: ModelOptions, output: OutputOptions) -> None:
    """Show the next-token distribution at each stage of the chain: raw, penalties, temperature, top_k, top_p,
    min_p, in the order of --samplers, and each other stage (mask, DRY, typical-p, XTC, Mirostat...) when it is
    on. The numbers come from the functions decoding uses; stages that are off are listed as off.

    Examples:

      llmgen inspect --temperature 0.8 --top-k 40 --top-p 0.9 "The capital of France is"

      llmgen inspect --greedy --steps 3 --continue " Paris" --json "The capital of France is"
    """
    from llmgen.decoding.inspection import check_room, inspect_steps
    from llmgen.decoding.processors.tables import build_tables
    from llmgen.decoding.sampling import make_generator

    sampling = sampling.merged(beams)
    model_opts = common.model_options(sampling, model_opts)
    resolved = common.resolve_settings(sampling)
    config = resolved.config
    if config.num_beams > 1:
        raise UsageError("inspect shows the sampling chain, and beam search is not part of it: drop --num-beams")
    if config.constrained:
        raise UsageError("inspect does not show a constraint's mask yet: drop the constraint option")
    if config.n > 1:
        raise UsageError("inspect follows one sequence: drop -n")
    plot: Path | None = own.plot
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot: {str(plot)!r} must end in .png")
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            raise UsageError("--plot needs matplotlib: pip install 'llmgen[plot]' (or pip install matplotlib)") from None
    if sampling.dump_config:
        common.dump_config(resolved, {"model": (model_opts.model, "flag or default"),
                                      **common.model_settings(model_opts)})
        return
    text = common.read_prompt(prompt)
    loaded = common.load_model(model_opts.model, model_opts)
    ids = common.prompt_ids(loaded, text, output, config.template_kwargs())
    forced: list[int] = []
    if own.continue_text:
        forced = list(loaded.tokenizer(own.continue_text, add_special_tokens=False)["input_ids"])
    check_room(len(ids), len(forced), own.steps, loaded.context_length)
    generator = make_generator(config.seed, loaded.device)
    tokenizer = loaded.tokenizer
    console = Console(highlight=False)
    first: StepView | None = None
    tables = build_tables(config, loaded.tokenizer, loaded.eos_token_ids)
    for step in inspect_steps(loaded.engine.sequence(), ids, forced, config, generator, own.steps,
                              loaded.eos_token_ids, tables):
        first = first or step
        if output.json:
            sys.stdout.write(json.dumps(step_json(step, tokenizer, own.top), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            console.print(step_table(step, tokenizer, own.top))
    if plot is not None and first is not None:
        write_plot(first, tokenizer, own.top, plot)


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token])


def candidates(step: StepView, top: int) -> list[int]:
    """The `top` most likely raw tokens, and the chosen one if it is not among them."""
    ids = step.stages[0].probs.topk(min(top, step.stages[0].probs.shape[-1])).indices.tolist()
    return ids if step.chosen in ids else [*ids, step.chosen]


def step_json(step: StepView, tokenizer: Any, top: int) -> dict[str, object]:
    stages = []
    for stage in step.stages:
        values, ids = stage.probs.topk(min(top, stage.kept))
        stages.append({"name": stage.name, "on": stage.on, "kept": stage.kept, "entropy": round(stage.entropy, 6),
                       "top": [{"id": i, "token": token_text(tokenizer, i), "prob": round(p, 8)}
                               for i, p in zip(ids.tolist(), values.tolist())]})
    return {"position": step.position,
            "chosen": {"id": step.chosen, "token": token_text(tokenizer, step.chosen),
                       "prob": round(float(step.stages[-1].probs[step.chosen]), 8)},
            "stages": stages}


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def step_table(step: StepView, tokenizer: Any, top: int) -> Table:
    chosen = token_text(tokenizer, step.chosen)
    table = Table(title=f"position {step.position}: chose {_quoted(chosen)} (entropy in bits)", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("token", min_width=8, max_width=14, no_wrap=True, overflow="ellipsis")
    for stage in step.stages:
        table.add_column(stage.name if stage.on else f"{stage.name}\n(off)", justify="right", no_wrap=True,
                         min_width=max(6, len(stage.name)), style="" if stage.on else "dim")
    table.add_column("cut by", min_width=6, no_wrap=True)
    for token in candidates(step, top):
        cells = []
        for stage in step.stages:
            p = float(stage.probs[token])
            cells.append("cut" if stage.logits[token] == -math.inf else f"{p:.4f}")
        cut = step.cut_at(token) or ""
        style = "bold" if token == step.chosen else ""
        table.add_row(_quoted(token_text(tokenizer, token)), *cells, cut, style=style)
    table.add_section()
    table.add_row("kept", *(str(s.kept) for s in step.stages), "", style="dim")
    table.add_row("entropy", *(f"{s.entropy:.3f}" for s in step.stages), "", style="dim")
    return table


def write_plot(step: StepView, tokenizer: Any, top: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = candidates(step, top)
    labels = [_quoted(token_text(tokenizer, t)) for t in ids]
    fig, axes = plt.subplots(1, len(step.stages), figsize=(2.6 * len(step.stages), 0.3 * len(ids) + 1.6),
                             sharey=True)
    for ax, stage in zip(axes, step.stages):
        probs = [float(stage.probs[t]) for t in ids]
        colours = ["tab:red" if t == step.chosen else ("tab:blue" if stage.on else "tab:gray") for t in ids]
        ax.barh(range(len(ids)), probs, color=colours)
        ax.set_title(f"{stage.name}{'' if stage.on else ' (off)'}\nkept {stage.kept}, H {stage.entropy:.2f} bits",
                     fontsize=9)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(range(len(ids)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(f"position {step.position}: the chosen token in red", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise UsageError(f"--plot: cannot write {path}: {err.strerror}") from None
    finally:
        plt.close(fig)
