"""`llmgen bench`: decoding strategies side by side on one model, interleaved, with medians."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmgen.cli import common
from llmgen.cli.options import MODEL, OUTPUT, SAMPLING, with_options
from llmgen.cli.output import stderr_console
from llmgen.config import DecodingConfig
from llmgen.errors import IncompatibleDraftError, UsageError

PANEL = "Benchmark"


def _split(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated lists both work: --gamma 1,2 --gamma 4."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def parse_gammas(values: list[str] | None) -> list[int | str]:
    gammas: list[int | str] = []
    for item in _split(values) or ["5"]:
        if item == "auto":
            gammas.append("auto")
            continue
        try:
            gamma = int(item)
        except ValueError:
            raise UsageError(f"--gamma: {item!r} is not an integer or 'auto'") from None
        if gamma < 1:
            raise UsageError(f"--gamma: {gamma} must be >= 1")
        gammas.append(gamma)
    return list(dict.fromkeys(gammas))


def bench_config(resolved: Any) -> DecodingConfig:
    """The benchmark's settings: greedy and 128 new tokens unless a flag or a preset says otherwise."""
    config, sources = resolved.config, resolved.sources
    if config.n != 1:
        raise UsageError("-n: bench generates one sequence per run")
    changes: dict[str, Any] = {}
    if sources["temperature"] == "default":
        changes["temperature"] = 0.0
    if sources["max_new_tokens"] == "default":
        changes["max_new_tokens"] = 128
    return config.replace(**changes) if changes else config


def pick_strategies(requested: list[str], explicit: bool, drafts: list[str], model: str) -> tuple[list[str], list[str]]:
    """The strategies to run, and notes about default ones skipped (an explicit one missing is an error)."""
    from llmgen.bench import contenders

    notes = []
    chosen = []
    for name in requested:
        contenders.check_strategy(name)
        why = contenders.available(name)
        if why is None and name == "draft" and not drafts and model != "smollm2-135m":
            why = "no --draft given (the built-in draft 'small' belongs to smollm2-135m)"
        if why is not None:
            if explicit:
                raise UsageError(f"--strategies {name}: {why}")
            notes.append(f"skipping {name}: {why}")
            continue
        chosen.append(name)
    return list(dict.fromkeys(chosen)), notes


@with_options(sampling=SAMPLING, model_opts=MODEL, output=OUTPUT)
def bench(
    *,
    prompts: Annotated[Optional[list[str]], typer.Option(
        "--prompts", help="Prompt sets: built-in grounded, correct, proofread, open, code, or a file (one prompt per line, or JSONL "
        'with a "prompt" field). Repeat or separate with commas.', show_default="grounded",
        rich_help_panel=PANEL)] = None,
    strategies: Annotated[Optional[list[str]], typer.Option(
        "--strategies", "-s", help="plain, penalties, ngram, draft, beam; repeat or separate with commas.",
        show_default="plain,ngram,draft,beam (those installed)", rich_help_panel=PANEL)] = None,
    gamma: Annotated[Optional[list[str]], typer.Option(
        "--gamma", "-g", help="Draft lengths for ngram and draft, e.g. 1,2,4,8,auto (a sweep).",
        show_default="5", rich_help_panel=PANEL)] = None,
    draft: Annotated[Optional[list[str]], typer.Option(
        "--draft", help="Draft model(s) for the draft strategy; repeatable.",
        show_default="small, with the default model", rich_help_panel=PANEL)] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", help="Beams for the beam strategy.",
                                           rich_help_panel=PANEL)] = 4,
    runs: Annotated[int, typer.Option("--runs", "-r", help="Measured runs per configuration (run i reads "
                                      "prompt i of the set).", rich_help_panel=PANEL)] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured warm-up runs per configuration; 0 = none.",
                                        rich_help_panel=PANEL)] = 1,
    baseline: Annotated[str, typer.Option("--baseline", help="'hf' adds HF generate() with the same settings; "
                                          "'none' = off.", rich_help_panel=PANEL)] = "none",
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG: tokens/s by strategy, speedup "
                                                 "against γ (needs the extra llmgen\\[plot]: matplotlib).", show_default="none",
                                                 rich_help_panel=PANEL)] = None,
    roofline: Annotated[bool, typer.Option("--roofline", help="Measure memory bandwidth and show plain decoding "
                                           "against its ceiling.", rich_help_panel=PANEL)] = False,
    roofline_mb: Annotated[int, typer.Option("--roofline-mb", help="Size of the tensor read that measures "
                                             "bandwidth, in MB.", rich_help_panel=PANEL)] = 1024,
    sampling: dict[str, Any], model_opts: dict[str, Any], output: dict[str, Any],
) -> None:
    """Measure decoding strategies side by side: tokens/s, time to first token, memory, quality.

    Runs are interleaved (A B A B ...) after a warm-up; tables show medians with min and max. Greedy
    and 128 new tokens unless flags or a preset say otherwise.

    Examples:

      llmgen bench --baseline hf --roofline

      llmgen bench -s ngram,draft --gamma 1,2,3,4,5,6,7,8,auto --plot sweep.png

      llmgen bench -s plain,penalties --prompts open --json > quality.json
    """
    from llmgen.bench import prompts as prompt_sets
    from llmgen.bench import plot as plotting
    from llmgen.bench import report, roofline as roof, runner

    if baseline not in ("hf", "none"):
        raise UsageError(f"--baseline: {baseline!r} must be 'hf' or 'none'")
    if roofline_mb < 1:
        raise UsageError(f"--roofline-mb must be >= 1, not {roofline_mb}")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot: {str(plot)!r} must end in .png")
        plotting.require()
    resolved = common.resolve_settings(sampling)
    config = bench_config(resolved)
    if sampling["dump_config"]:
        common.dump_config(resolved, {"model": (model_opts["model"], "flag or default")})
        return
    gammas = parse_gammas(gamma)
    drafts = _split(draft)
    explicit = bool(strategies)
    chosen, notes = pick_strategies(_split(strategies) or ["plain", "ngram", "draft", "beam"], explicit, drafts,
                                    model_opts["model"])
    if roofline and "plain" not in chosen:
        chosen.insert(0, "plain")
    sets = [prompt_sets.load(ref) for ref in dict.fromkeys(_split(prompts) or ["grounded"])]
    # Checked before the (slow) loads: Plan validates the numbers.
    runner.Plan(sets, chosen, gammas, (), runs, warmup, baseline == "hf", num_beams)
    console = stderr_console()
    for note in notes:
        if not output["quiet"]:
            console.print(f"llmgen bench: {note}", highlight=False)

    loaded = common.load_model(model_opts["model"], model_opts)
    draft_models = []
    if "draft" in chosen:
        for ref in drafts or ["small"]:
            model = common.load_model(ref, {**model_opts, "dtype": "auto"})
            if model.vocab_size != loaded.vocab_size:
                raise IncompatibleDraftError(f"draft {ref!r} has a vocabulary of {model.vocab_size} tokens; "
                                             f"the target {loaded.ref!r} has {loaded.vocab_size}")
            draft_models.append(model)
    plan = runner.Plan(sets, chosen, gammas, draft_models, runs, warmup, baseline == "hf", num_beams,
                       output["chat"], output["system"])
    result = _run_with_progress(loaded, config, plan, quiet=output["quiet"])
    roofline_result = None
    if roofline:
        plain_rows = [r for r in result.rows if r.contender.strategy == "plain" and r.contender.engine == "llmgen"]
        tps = plain_rows[0].summary("decode_tps") if plain_rows else None
        roofline_result = roof.measure(loaded.model, loaded.device, tps.median if tps else None,
                                       size_bytes=roofline_mb * 1_000_000)
    if plot is not None:
        plotting.write(result, plot)
    if output["json"]:
        sys.stdout.write(json.dumps(report.as_json(result, roofline_result), ensure_ascii=False) + "\n")
    elif sys.stdout.isatty():
        from rich.console import Console

        out = Console(highlight=False)
        for renderable in report.rich_table(result, roofline_result):
            out.print(renderable)
    else:
        sys.stdout.write(report.markdown(result, roofline_result))
    sys.stdout.flush()
    if plot is not None and not output["quiet"]:
        console.print(f"llmgen bench: wrote {plot}", highlight=False)


def _run_with_progress(loaded: Any, config: DecodingConfig, plan: Any, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llmgen.bench import runner

    if quiet:
        return runner.run(loaded, config, plan)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:
        task = progress.add_task("bench", total=None)

        def on_progress(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=what)

        return runner.run(loaded, config, plan, on_progress)
