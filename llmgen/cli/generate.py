"""`llmgen generate`: plain decoding with every sampling option."""

from __future__ import annotations

from typing import Any

from llmgen.cli import common
from llmgen.cli.options import MODEL, OUTPUT, SAMPLING, PromptArg, with_options
from llmgen.cli.output import make_renderer
from llmgen.decode import CachedLM, sample_tokens


@with_options(sampling=SAMPLING, model_opts=MODEL, output=OUTPUT)
def generate(prompt: PromptArg = None, *, sampling: dict[str, Any], model_opts: dict[str, Any],
             output: dict[str, Any]) -> None:
    """Generate text from PROMPT with the target model.

    Examples:

      llmgen generate --top-p 0.9 --presence-penalty 0.5 "Write a haiku about tea."

      cat notes.txt | llmgen generate --preset precise > out.txt
    """
    resolved = common.resolve_settings(sampling)
    if sampling["dump_config"]:
        common.dump_config(resolved, {"model": (model_opts["model"], "flag or default")})
        return
    text = common.read_prompt(prompt)
    loaded = common.load_model(model_opts["model"], model_opts)
    ids = common.prompt_ids(loaded, text, output)
    renderer = make_renderer(output["json"], output["quiet"])

    def plain(prompt_ids: list[int], generator: Any) -> Any:
        lm = CachedLM(loaded.model)
        tokens = sample_tokens(lm, prompt_ids, resolved.config, generator)
        return ((token, "target") for token in tokens), dict

    common.run_all(loaded, ids, resolved, renderer, plain)
