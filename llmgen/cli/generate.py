"""`llmgen generate`: plain decoding with every sampling option, or beam search with --num-beams."""

from __future__ import annotations

import sys
from typing import Any

from llmgen import beam
from llmgen.cli import common
from llmgen.cli.options import BEAM, MODEL, OUTPUT, SAMPLING, PromptArg, with_options
from llmgen.cli.output import TerminalRenderer, beam_progress, make_renderer
from llmgen.config import Resolved
from llmgen.decode import CachedLM, sample_tokens
from llmgen.generation import token_budget
from llmgen.models import LoadedModel


@with_options(sampling=SAMPLING, beams=BEAM, model_opts=MODEL, output=OUTPUT)
def generate(prompt: PromptArg = None, *, sampling: dict[str, Any], beams: dict[str, Any],
             model_opts: dict[str, Any], output: dict[str, Any]) -> None:
    """Generate text from PROMPT with the target model.

    Examples:

      llmgen generate --top-p 0.9 --presence-penalty 0.5 "Write a haiku about tea."

      cat notes.txt | llmgen generate --preset precise > out.txt

      llmgen generate --num-beams 4 -n 2 --no-repeat-ngram-size 3 --json "Translate to French: cheese"
    """
    resolved = common.resolve_settings({**sampling, **beams})
    notes = beam.check_combination(resolved)
    if sampling["dump_config"]:
        common.dump_config(resolved, {"model": (model_opts["model"], "flag or default")})
        return
    for note in notes:
        print(f"llmgen: note: {note}", file=sys.stderr)
    text = common.read_prompt(prompt)
    loaded = common.load_model(model_opts["model"], model_opts)
    ids = common.prompt_ids(loaded, text, output)
    if resolved.config.num_beams > 1:
        run_beam_search(loaded, ids, resolved, output)
        return
    renderer = make_renderer(output["json"], output["quiet"])

    def plain(prompt_ids: list[int], generator: Any) -> Any:
        lm = CachedLM(loaded.model)
        tokens = sample_tokens(lm, prompt_ids, resolved.config, generator)
        return ((token, "target") for token in tokens), dict

    common.run_all(loaded, ids, resolved, renderer, plain)


def run_beam_search(loaded: LoadedModel, ids: list[int], resolved: Resolved, output: dict[str, Any]) -> None:
    """Beams cannot stream: live progress on a terminal, then the `n` best hypotheses, best first."""
    config = resolved.config
    renderer = make_renderer(output["json"], output["quiet"])
    with beam_progress(loaded.tokenizer, isinstance(renderer, TerminalRenderer)) as show:
        on_step = None if show is None else (lambda s: show(s.step, s.finished, s.best_token_ids))
        found = beam.beam_search(loaded.model, ids, config, loaded.eos_token_ids,
                                 token_budget(len(ids), config, loaded.context_length),
                                 beam.stop_string_check(loaded.tokenizer, config.stop), on_step)
    best = found.hypotheses[:config.n]
    for index, hypothesis in enumerate(best):
        result = beam.to_result(hypothesis, loaded.tokenizer, ids, config, found.stats)
        renderer.begin(index, len(best))
        if result.text:
            renderer.text(result.text, "target")
        renderer.end(result)
