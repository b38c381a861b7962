"""What `generate` and `speculate` will run, decided from the settings before any model is loaded.

    strategy   where     when
    input      local     --input FILE: continuous batching of the file's rows in this process
    input      ray       --input FILE --ray [ADDRESS]: the rows' chunks on Ray actors
    input      vllm      --input FILE --backend vllm: every row in one vLLM call
    beam       local     --num-beams B > 1
    samples    local     -n N > 1: the N samples as rows of one batch
    single     local     one sequence (plain decoding)
    single     vllm      one prompt (its -n samples or its beams) through vLLM

`speculate` runs locally or on vLLM; its draft is 'ngram', 'self' or a model (`plan_speculate`,
`check_speculate_on_vllm`).

Every combination that cannot run is refused here, in one line, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError

NGRAM, SELF, SUFFIX = "ngram", "self", "suffix"  # the drafts that are not a model reference (as speculative.runner's)


@dataclass(frozen=True)
class Plan:
    strategy: str  # "input", "beam", "samples" or "single"
    where: str  # "local", "ray" or "vllm"


def plan_generate(config: DecodingConfig, *, prompt_given: bool, input_given: bool, backend: str,
                  ray: str | None, logprobs: bool, show_probs: bool) -> Plan:
    """The plan for `generate`; raises UsageError for a combination that cannot run."""
    if config.num_beams > 1 and show_probs:
        raise UsageError("--show-probs colours streamed tokens, and beam search does not stream; "
                         "use --logprobs N --json")
    if ray and not input_given:
        raise UsageError("--ray shards the prompts of --input FILE over Ray actors; give --input")
    if input_given:
        if prompt_given:
            raise UsageError("give either a PROMPT or --input, not both")
        if config.n > 1:
            raise UsageError("--input gives one row per prompt; -n > 1 is not supported with it")
        if config.num_beams > 1:
            raise UsageError("--input decodes with sampling or greedy; beam search takes one PROMPT at a time")
    if backend == "vllm":
        if logprobs:
            raise UsageError("--logprobs and --show-probs are not mapped from vLLM yet; use --backend hf")
        if ray:
            raise UsageError("--ray runs llmgen's own decoding on Ray actors; vLLM distributes itself "
                             "(distributed_executor_backend = \"ray\")")
        return Plan("input" if input_given else "single", "vllm")
    if input_given:
        return Plan("input", "ray" if ray else "local")
    if config.num_beams > 1:
        return Plan("beam", "local")
    return Plan("samples" if config.n > 1 else "single", "local")



def plan_speculate(config: DecodingConfig, sources: Mapping[str, str], *, draft: str | None, gamma: str,
                   ngram_max: int, ngram_min: int) -> int | Literal["auto"]:
    """Checks `speculate`'s settings on any backend; returns the parsed --gamma. Raises UsageError.

    `sources` names where each setting came from (`Resolved.sources`), for the message.
    """
    if config.num_beams > 1:
        raise UsageError("speculative decoding does not do beam search: num_beams must be 1 "
                         f"(it is {config.num_beams}, from {sources['num_beams']})")
    if config.no_repeat_ngram_size > 0:
        raise UsageError("speculate does not support no_repeat_ngram_size "
                         f"(set to {config.no_repeat_ngram_size} by {sources['no_repeat_ngram_size']})")
    if not draft:
        raise UsageError("--draft is required: 'ngram', or a draft model (e.g. --draft small)")
    return check_drafting(gamma, ngram_max, ngram_min)


def check_drafting(gamma: str, ngram_max: int, ngram_min: int) -> int | Literal["auto"]:
    """--gamma and the n-gram bounds, as speculate, chat and serve take them; returns the parsed --gamma."""
    # NOTE: imported here so that this module stays free of torch (`llmgen speculate --help` imports it)
    from llmgen.decoding.speculative import NgramProposer, parse_gamma

    parsed = parse_gamma(gamma)
    NgramProposer(ngram_max, ngram_min)  # validates the bounds before any loading
    return parsed


def check_speculate_on_vllm(*, draft: str, draft_quant: str, logprobs: bool) -> None:
    """What `speculate --backend vllm` refuses besides `plan_speculate`'s checks (vLLM's own drafting)."""
    if logprobs:
        raise UsageError("--logprobs and --show-probs are not mapped from vLLM yet; use --backend hf")
    if draft == SUFFIX:
        raise UsageError("--backend vllm: --draft suffix is llmgen's own draft (its store and --draft-cache)")
    if draft != NGRAM and (draft == SELF or draft_quant not in ("auto", "none")):
        raise UsageError("--backend vllm: an int4 draft (--draft self, --draft-quant int4) is llmgen's own CPU path")
