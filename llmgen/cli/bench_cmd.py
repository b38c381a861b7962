"""`llmgen bench`: decoding strategies side by side on one model, interleaved, with medians."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmgen.cli import common
from llmgen.cli.options import MODEL, OUTPUT, SAMPLING, DecodingFlags, ModelOptions, OutputOptions, with_options
from llmgen.cli.output import stderr_console
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError

if TYPE_CHECKING:
    from llmgen.loading.models import LoadedModel

PANEL = "Benchmark"


@with_options(sampling=SAMPLING, model_opts=MODEL, output=OUTPUT)
def bench(
    *,
    prompts: Annotated[list[str] | None, typer.Option(
        "--prompts", help="Prompt sets: built-in grounded, correct, proofread, open, code, rewrite, or a file (one prompt per line, or JSONL "
        'with a "prompt" field). Repeat or separate with commas.', show_default="grounded",
        rich_help_panel=PANEL)] = None,
    strategies: Annotated[list[str] | None, typer.Option(
        "--strategies", "-s", help="plain, int4 (plain decoding with the target's weights in 4 bits), penalties, "
        "ngram, suffix (its store kept across a row's runs), draft, cross (a --draft with another vocabulary), "
        "beam; repeat or separate with commas.",
        show_default="plain,int4,ngram,draft,beam (those that can run)", rich_help_panel=PANEL)] = None,
    gamma: Annotated[list[str] | None, typer.Option(
        "--gamma", "-g", help="Draft lengths for ngram, suffix, draft and cross, e.g. 1,2,4,8,auto (a sweep).",
        show_default="5", rich_help_panel=PANEL)] = None,
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="Draft model(s) for the draft strategy, each with its alias's own --quant ('small' is "
        "int4); 'self' is the target in int4. Repeatable.",
        show_default="small, with the default model", rich_help_panel=PANEL)] = None,
    num_beams: Annotated[int, typer.Option("--num-beams", help="Beams for the beam strategy.",
                                           rich_help_panel=PANEL)] = 4,
    runs: Annotated[int, typer.Option("--runs", "-r", help="Measured runs per configuration (run i reads "
                                      "prompt i of the set).", rich_help_panel=PANEL)] = 5,
    warmup: Annotated[int, typer.Option("--warmup", help="Unmeasured warm-up runs per configuration; 0 = none.",
                                        rich_help_panel=PANEL)] = 1,
    baseline: Annotated[str, typer.Option("--baseline", metavar="none|hf|llamacpp", help="'hf' adds HF generate() "
                                          "with the same settings; 'llamacpp' adds llama.cpp on the same GGUF file "
                                          "(greedy, the same threads; extra llmgen\\[llamacpp]); both: hf,llamacpp.",
                                          rich_help_panel=PANEL)] = "none",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG: tokens/s by strategy, speedup "
                                                 "against γ (needs the extra llmgen\\[plot]: matplotlib).", show_default="none",
                                                 rich_help_panel=PANEL)] = None,
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes", metavar="LIST", rich_help_panel=PANEL, show_default="off",
        help="Instead of the strategies: the batch-size sweep, e.g. 1,2,4,8,16: throughput and mean row "
             "latency of batched greedy decoding (16 prompts, 16 new tokens), against HF generate() on the "
             "same left-padded batches (float models); --plot draws throughput against batch size.")] = None,
    roofline: Annotated[bool, typer.Option("--roofline", help="Measure memory bandwidth and show plain decoding "
                                           "against its ceiling.", rich_help_panel=PANEL)] = False,
    roofline_mb: Annotated[int, typer.Option("--roofline-mb", help="Size of the tensor read that measures "
                                             "bandwidth, in MB.", rich_help_panel=PANEL)] = 1024,
    sampling: DecodingFlags, model_opts: ModelOptions, output: OutputOptions,
) -> None:
    """Measure decoding strategies side by side: tokens/s, time to first token, memory, quality.

    Runs are interleaved (A B A B ...) after a warm-up; tables show medians with min and max. Greedy
    and 128 new tokens unless flags or a preset say otherwise.

    Examples:

      llmgen bench --baseline hf --roofline

      llmgen bench -s ngram,draft --gamma 1,2,3,4,5,6,7,8,auto --plot sweep.png

      llmgen bench -s plain,penalties --prompts open --json > quality.json

      llmgen bench --engine torch,llamacpp -s plain,ngram --baseline llamacpp --threads 1

    --engine takes a list here: the plain and n-gram rows run on each engine, interleaved, labelled by engine.
    """
    from llmgen.bench import planning, report, runner
    from llmgen.bench import plot as plotting
    from llmgen.bench import prompts as prompt_sets
    from llmgen.bench import roofline as roof

    baselines = planning.parse_baselines(baseline)
    if roofline_mb < 1:
        raise UsageError(f"--roofline-mb must be >= 1, not {roofline_mb}")
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise UsageError(f"--plot: {str(plot)!r} must end in .png")
        plotting.require()
    model_opts = common.model_options(sampling, model_opts)
    resolved = common.resolve_settings(sampling)
    config = planning.bench_config(resolved)
    engines = list(dict.fromkeys(planning.split([model_opts.engine]))) or ["auto"]
    if sampling.dump_config:
        common.dump_config(resolved, {"model": (model_opts.model, "flag or default"),
                                      **common.model_settings(model_opts, engine=engines[0])})
        return
    if batch_sizes is not None:
        _batch_sweep(batch_sizes, runs, model_opts, output, plot)
        return
    gammas = planning.parse_gammas(gamma)
    drafts = planning.split(draft)
    explicit = bool(strategies)
    chosen, notes = planning.pick_strategies(planning.split(strategies) or list(planning.DEFAULT_STRATEGIES),
                                             explicit, drafts, model_opts.model)
    if roofline and "plain" not in chosen:
        chosen.insert(0, "plain")
    sets = [prompt_sets.load(ref) for ref in dict.fromkeys(planning.split(prompts) or ["grounded"])]
    # Checked before the (slow) loads: Plan validates the numbers.
    runner.Plan(sets, chosen, gammas, (), runs, warmup, "hf" in baselines, num_beams)
    console = stderr_console()
    for note in notes:
        if not output.quiet:
            console.print(f"llmgen bench: {note}", highlight=False)

    def load(ref: str, engine: str, dtype: str | None, quant: str | None) -> LoadedModel:
        return common.load_model(ref, dataclasses.replace(model_opts, dtype=dtype or model_opts.dtype,
                                                          quant=quant or model_opts.quant), engine)

    models = planning.load_models(load, model_opts.model, engines, chosen, explicit, drafts, baselines, config,
                                  roofline)
    for note in models.notes:
        if not output.quiet:
            console.print(f"llmgen bench: {note}", highlight=False)
    loaded = models.target
    plan = runner.Plan(sets, models.chosen, gammas, models.drafts, runs, warmup, "hf" in baselines, num_beams,
                       output.chat, output.system, models.int4, models.llamacpp_gguf, models.others)
    result = _run_with_progress(loaded, config, plan, quiet=output.quiet)
    roofline_result = None
    if roofline:
        plain_rows = [r for r in result.rows if r.contender.strategy == "plain" and r.contender.engine == "llmgen"]
        tps = plain_rows[0].summary("decode_tps") if plain_rows else None
        roofline_result = roof.measure(loaded.model, loaded.device, tps.median if tps else None,
                                       size_bytes=roofline_mb * 1_000_000)
    if plot is not None:
        plotting.write(result, plot)
    if output.json:
        sys.stdout.write(json.dumps(report.as_json(result, roofline_result), ensure_ascii=False) + "\n")
    elif sys.stdout.isatty():
        from rich.console import Console

        out = Console(highlight=False)
        for renderable in report.rich_table(result, roofline_result):
            out.print(renderable)
    else:
        sys.stdout.write(report.markdown(result, roofline_result))
    sys.stdout.flush()
    if plot is not None and not output.quiet:
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


def _batch_sweep(sizes_text: str, runs: int, model_opts: ModelOptions, output: OutputOptions,
                 plot: Path | None) -> None:
    """`--batch-sizes`: the sweep of `llmgen.bench.batch`, as a table, JSON and a plot."""
    from llmgen.bench import batch, planning, report

    try:
        sizes = [int(item) for item in planning.split([sizes_text])]
    except ValueError:
        raise UsageError(f"--batch-sizes: {sizes_text!r} must be a list of integers, e.g. 1,2,4,8,16") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes: {sizes_text!r} must be integers >= 1")
    loaded = common.load_model(model_opts.model, model_opts)
    rows = batch.sweep(loaded, runs, with_hf=loaded.quant == "none", sizes=sizes)
    result = {"model": loaded.ref, "quant": loaded.quant, "cpu": report.machine(loaded.device),
              "threads": __import__("torch").get_num_threads(), "date": report.today(), "runs": runs,
              "sections": {"sweep": rows}}
    if plot is not None:
        batch.plot_sweep([result], plot)
    if output.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("\n".join([f"### batch-size sweep · {result['date']} · {result['cpu']} · {loaded.ref} "
                                    f"({loaded.quant}) · median of {runs} alternating runs", "",
                                    *batch.markdown(rows)]) + "\n")
