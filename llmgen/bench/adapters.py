"""The benchmark's only contact with speculative decoding and beam search.

Both live in their own modules (`llmgen.decoding.speculative`, `llmgen.decoding.beam`). They are imported here, inside
the functions, so that the rest of the benchmark runs on an installation that lacks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import TokenSource, token_budget
from llmgen.errors import UsageError
from llmgen.loading.models import LoadedModel


def speculative_source(target: LoadedModel, draft: LoadedModel | None, prompt_ids: list[int],
                       config: DecodingConfig, gamma: int | str, generator: torch.Generator,
                       ) -> tuple[TokenSource, Callable[[], dict[str, Any]]]:
    """A token source of speculative decoding, and a function giving its statistics once it is done
    (target_forwards, draft_tokens, accepted_tokens, acceptance_rate, tokens_per_target_forward, ...)."""
    try:
        from llmgen.decoding.speculative import make_source, parse_gamma
    except ModuleNotFoundError:
        raise UsageError("speculative decoding is not part of this installation") from None
    return make_source(target, draft, prompt_ids, config, generator, gamma=parse_gamma(gamma))


def beam_tokens(loaded: LoadedModel, prompt_ids: list[int], config: DecodingConfig) -> list[int]:
    """The best beam's generated token ids (with the final EOS if it ended on one)."""
    try:
        from llmgen.decoding.beam import beam_search
    except ModuleNotFoundError:
        raise UsageError("beam search is not part of this installation") from None
    budget = token_budget(len(prompt_ids), config, loaded.context_length)
    output = beam_search(loaded.engine, prompt_ids, config, loaded.eos_token_ids, budget)
    return list(output.hypotheses[0].token_ids) if output.hypotheses else []
