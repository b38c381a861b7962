"""`llmgen generate`: plain decoding with every sampling option, or beam search with --num-beams;
`-n N` decodes the N samples as one batch, and `--input FILE` decodes many prompts (`batch_run.py`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from llmgen.cli import backend_run, batch_run, common
from llmgen.cli.backend_run import BACKEND, RAY, BackendOptions, RayOptions
from llmgen.cli.batch_run import BATCH, BatchOptions
from llmgen.cli.options import (
    BEAM,
    LOGPROBS,
    MODEL,
    OUTPUT,
    PROMPT_CACHE,
    SAMPLING,
    DecodingFlags,
    ModelOptions,
    OutputOptions,
    ProbsOptions,
    PromptArg,
    PromptCacheOptions,
    with_options,
)
from llmgen.cli.output import TerminalRenderer, beam_progress
from llmgen.decoding.config import Resolved
from llmgen.decoding.plan import plan_generate
from llmgen.errors import UsageError

if TYPE_CHECKING:
    from llmgen.decoding.logprobs import LogprobSpec
    from llmgen.loading.models import LoadedModel


@with_options(sampling=SAMPLING, beams=BEAM, model_opts=MODEL, output=OUTPUT, cache=PROMPT_CACHE, probs=LOGPROBS,
              batch=BATCH, backend=BACKEND, ray=RAY)
def generate(prompt: PromptArg = None, *, sampling: DecodingFlags, beams: DecodingFlags,
             model_opts: ModelOptions, output: OutputOptions, cache: PromptCacheOptions, probs: ProbsOptions,
             batch: BatchOptions, backend: BackendOptions, ray: RayOptions) -> None:
    """Generate text from PROMPT with the target model.

    -n N decodes the N samples as one batch, each row with its own random stream (from --seed and its index).

    Beam search (--num-beams) and `llmgen speculate` decode one sequence at a time.

    --input FILE decodes every prompt of FILE, --batch-size at a time; a prompt that fails gets an error row.

    With --json, one row per prompt: "index", "id" (when given), and the fields of a single run or "error".

    Without --json, the texts, separated by a line holding only the record separator \\x1e (NUL-ended with -0).

    Examples:

      llmgen generate --top-p 0.9 --presence-penalty 0.5 "Write a haiku about tea."

      cat notes.txt | llmgen generate --preset precise > out.txt

      llmgen generate --num-beams 4 -n 2 --no-repeat-ngram-size 3 --json "Translate to French: cheese"

      llmgen generate --input questions.jsonl --json --greedy -N 64 > answers.jsonl

      llmgen generate --logprobs 5 --json -N 16 "The capital of France is"

      llmgen generate --prompt-cache doc.kv "$(cat report.txt) Summarise the report."
    """
    from llmgen.decoding import beam

    sampling = sampling.merged(beams)
    model_opts = common.model_options(sampling, model_opts)
    resolved = common.resolve_settings(sampling)
    notes = beam.check_combination(resolved)
    spec = common.logprob_spec(probs, output.json or batch.input is not None)
    backend_name, engine_options = backend_run.choose(sampling, backend)
    plan = plan_generate(resolved.config, prompt_given=prompt is not None, input_given=batch.input is not None,
                         backend=backend_name, ray=ray.ray, logprobs=spec is not None,
                         show_probs=probs.show_probs or probs.show_alternatives)
    if sampling.dump_config:
        common.dump_config(resolved, {"model": (model_opts.model, "flag or default"),
                                      **common.model_settings(model_opts)})
        return
    for note in notes:
        print(f"llmgen: note: {note}", file=sys.stderr)
    if cache.prompt_cache is not None and (plan.where != "local" or plan.strategy != "single"):
        raise UsageError(f"--prompt-cache works with one sequence decoded here, not with "
                         f"{plan.strategy if plan.where == 'local' else plan.where} (--input shares prefixes in memory)")
    if plan.where == "vllm":
        if plan.strategy == "input":
            light = backend_run.tokenizer_only(model_opts)
            batch_run.run_input(light, resolved, batch, output, None,
                                backend_run.vllm_decoder(light, resolved, model_opts, engine_options))
        else:
            backend_run.run_vllm(common.read_prompt(prompt), resolved, model_opts, output, engine_options)
        return
    if plan.strategy == "input":
        loaded = common.load_model(model_opts.model, model_opts)
        decoder = backend_run.ray_decoder(ray, model_opts, batch.batch_size) if plan.where == "ray" else None
        batch_run.run_input(loaded, resolved, batch, output, spec, decoder)
        return
    text = common.read_prompt(prompt)
    loaded = common.load_model(model_opts.model, model_opts)
    ids = common.prompt_ids(loaded, text, output, resolved.config.template_kwargs())
    if plan.strategy == "beam":
        run_beam_search(loaded, ids, resolved, output, spec)
        return
    renderer = common.make_renderer(output, probs, spec, loaded.tokenizer)
    if plan.strategy == "samples":
        batch_run.sample_n(loaded, ids, resolved, renderer, spec)
        return
    common.run_all(loaded, ids, resolved, renderer, logprobs=spec, prompt_cache=cache.prompt_cache)


def run_beam_search(loaded: LoadedModel, ids: list[int], resolved: Resolved, output: OutputOptions,
                    spec: LogprobSpec | None = None) -> None:
    """Beams cannot stream: live progress on a terminal, then the `n` best hypotheses, best first."""
    from llmgen.decoding import beam, constraints
    from llmgen.decoding.sequence import token_budget

    config = resolved.config
    renderer = common.output_renderer(output.json, output.quiet)
    with beam_progress(loaded.tokenizer, isinstance(renderer, TerminalRenderer)) as show:
        on_step = None if show is None else (lambda s: show(s.step, s.finished, s.best_token_ids))
        found = beam.beam_search(loaded.engine, ids, config, loaded.eos_token_ids,
                                 token_budget(len(ids), config, loaded.context_length),
                                 loaded.tokenizer, on_step, spec,
                                 constraints.new_matcher(config, loaded))
    best = found.hypotheses[:config.n]
    for index, hypothesis in enumerate(best):
        result = beam.to_result(hypothesis, loaded.tokenizer, ids, config, found.stats)
        renderer.begin(index, len(best))
        if result.text:
            renderer.text(result.text, "target")
        renderer.end(result)
        constraints.warn_incomplete(config, result.finish_reason)
