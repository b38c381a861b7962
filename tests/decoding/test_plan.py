"""`decoding/plan.py`: what `generate` runs, and the combinations refused before any model loads."""

from __future__ import annotations

import pytest

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plan import Plan, plan_generate
from llmgen.errors import UsageError

BASE = {"prompt_given": True, "input_given": False, "backend": "hf", "ray": None, "logprobs": False,
        "show_probs": False}


@pytest.mark.parametrize("config,changes,plan", [
    (DecodingConfig(), {}, Plan("single", "local")),
    (DecodingConfig(n=3), {}, Plan("samples", "local")),
    (DecodingConfig(num_beams=4), {}, Plan("beam", "local")),
    (DecodingConfig(), {"prompt_given": False, "input_given": True}, Plan("input", "local")),
    (DecodingConfig(), {"prompt_given": False, "input_given": True, "ray": "local"}, Plan("input", "ray")),
    (DecodingConfig(), {"prompt_given": False, "input_given": True, "backend": "vllm"}, Plan("input", "vllm")),
    (DecodingConfig(num_beams=2), {"backend": "vllm"}, Plan("single", "vllm")),
])
def test_each_way_of_running(config, changes, plan) -> None:
    assert plan_generate(config, **{**BASE, **changes}) == plan


@pytest.mark.parametrize("config,changes,message", [
    (DecodingConfig(), {"input_given": True}, "either a PROMPT or --input"),
    (DecodingConfig(n=2), {"prompt_given": False, "input_given": True}, "-n > 1"),
    (DecodingConfig(num_beams=2), {"prompt_given": False, "input_given": True}, "beam search takes one PROMPT"),
    (DecodingConfig(), {"ray": "auto"}, "give --input"),
    (DecodingConfig(num_beams=2), {"show_probs": True}, "does not stream"),
    (DecodingConfig(), {"backend": "vllm", "logprobs": True}, "not mapped from vLLM"),
    (DecodingConfig(), {"backend": "vllm", "prompt_given": False, "input_given": True, "ray": "local"},
     "vLLM distributes itself"),
])
def test_combinations_that_cannot_run_are_refused_in_one_line(config, changes, message) -> None:
    with pytest.raises(UsageError, match=message) as err:
        plan_generate(config, **{**BASE, **changes})
    assert "\n" not in str(err.value)
