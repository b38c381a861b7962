"""What `generate` will run, decided from the settings before any model is loaded.

    strategy   where     when
    input      local     --input FILE: continuous batching of the file's rows in this process
    input      ray       --input FILE --ray [ADDRESS]: the rows' chunks on Ray actors
    input      vllm      --input FILE --backend vllm: every row in one vLLM call
    beam       local     --num-beams B > 1
    samples    local     -n N > 1: the N samples as rows of one batch
    single     local     one sequence (plain decoding)
    single     vllm      one prompt (its -n samples or its beams) through vLLM

Every combination that cannot run is refused here, in one line, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError


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
