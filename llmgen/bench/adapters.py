"""The benchmark's only contact with beam search (`llmgen.decoding.beam`), imported inside the function, so
that the rest of the benchmark runs on an installation that lacks it.
"""

from __future__ import annotations

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import token_budget
from llmgen.errors import UsageError
from llmgen.loading.models import LoadedModel


def beam_tokens(loaded: LoadedModel, prompt_ids: list[int], config: DecodingConfig) -> list[int]:
    """The best beam's generated token ids (with the final EOS if it ended on one)."""
    try:
        from llmgen.decoding.beam import beam_search
    except ModuleNotFoundError:
        raise UsageError("beam search is not part of this installation") from None
    budget = token_budget(len(prompt_ids), config, loaded.context_length)
    output = beam_search(loaded.engine, prompt_ids, config, loaded.eos_token_ids, budget)
    return list(output.hypotheses[0].token_ids) if output.hypotheses else []
