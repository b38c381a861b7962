"""`decoding/plan.py`: what `generate` runs, and the combinations refused before any model loads."""

from __future__ import annotations

import re

import pytest

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plan import Plan, check_drafting, check_speculate_on_vllm, plan_generate, plan_speculate
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


SOURCES = {"num_beams": "flag", "no_repeat_ngram_size": "preset p"}
SPEC = {"draft": "ngram", "gamma": "auto", "ngram_max": 4, "ngram_min": 2}


@pytest.mark.parametrize("changes,gamma", [({}, "auto"), ({"gamma": "5"}, 5), ({"draft": "small"}, "auto")])
def test_speculate_plans_its_gamma(changes, gamma) -> None:
    assert plan_speculate(DecodingConfig(), SOURCES, **{**SPEC, **changes}) == gamma


@pytest.mark.parametrize("config,changes,message", [
    (DecodingConfig(num_beams=2), {}, "does not do beam search: num_beams must be 1 (it is 2, from flag)"),
    (DecodingConfig(no_repeat_ngram_size=3), {}, "no_repeat_ngram_size (set to 3 by preset p)"),
    (DecodingConfig(), {"draft": None}, "--draft is required"),
    (DecodingConfig(), {"gamma": "0"}, "--gamma must be at least 1"),
    (DecodingConfig(), {"gamma": "lots"}, "--gamma must be a positive integer or 'auto'"),
    (DecodingConfig(), {"ngram_min": 5}, "1 <= min <= max"),
])
def test_speculate_refusals(config, changes, message) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        plan_speculate(config, SOURCES, **{**SPEC, **changes})


@pytest.mark.parametrize("draft,quant,logprobs,message", [
    ("ngram", "auto", True, "--logprobs and --show-probs are not mapped from vLLM"),
    ("self", "auto", False, "an int4 draft"),
    ("small", "int4", False, "an int4 draft"),
])
def test_speculate_refusals_on_vllm(draft, quant, logprobs, message) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        check_speculate_on_vllm(draft=draft, draft_quant=quant, logprobs=logprobs)


@pytest.mark.parametrize("draft,quant", [("ngram", "int4"), ("small", "auto"), ("small", "none")])
def test_speculate_on_vllm_allowed(draft, quant) -> None:
    check_speculate_on_vllm(draft=draft, draft_quant=quant, logprobs=False)


def test_chat_and_serve_check_their_drafting_as_speculate_does() -> None:
    assert check_drafting("auto", 4, 2) == "auto"
    assert check_drafting("3", 4, 2) == 3
    with pytest.raises(UsageError, match="--gamma must be at least 1"):
        check_drafting("0", 4, 2)
    with pytest.raises(UsageError, match=re.escape("1 <= min <= max")):
        check_drafting("auto", 2, 3)
