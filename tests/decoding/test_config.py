"""The decoding config: validation, greedy, and defaults < preset < flags."""

from __future__ import annotations

import pytest

from llmgen.decoding.config import DEFAULTS, DecodingConfig, parse_keys, resolve
from llmgen.errors import ConfigError


def test_defaults_are_what_hf_vllm_and_openai_users_expect() -> None:
    assert (DEFAULTS.temperature, DEFAULTS.top_k, DEFAULTS.top_p, DEFAULTS.min_p) == (1.0, 0, 1.0, 0.0)
    assert (DEFAULTS.frequency_penalty, DEFAULTS.presence_penalty, DEFAULTS.repetition_penalty) == (0, 0, 1.0)
    assert DEFAULTS.penalty_scope == "generated" and not DEFAULTS.greedy


def test_temperature_zero_is_greedy() -> None:
    assert DecodingConfig(temperature=0).greedy
    assert DecodingConfig(temperature=1e-6).greedy  # below 1e-5, as vLLM: logits / T would overflow
    assert not DecodingConfig(temperature=1e-4).greedy


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.01), ("min_p", -0.1), ("min_p", 1.5),
    ("frequency_penalty", 2.01), ("presence_penalty", -2.01), ("repetition_penalty", 0.0),
    ("repetition_penalty", 1e-4), ("repetition_penalty", 1e4),
    ("top_k", -1), ("n", 0), ("max_new_tokens", 0), ("penalty_window", -1), ("penalty_scope", "prompt"),
    ("num_beams", 0), ("early_stopping", "sometimes"), ("stop", ("",)),
])
def test_out_of_range_values_are_rejected_with_the_option_name(field: str, value) -> None:
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        DecodingConfig(**{field: value})


def test_flags_override_preset_which_overrides_defaults() -> None:
    resolved = resolve({"temperature": 0.3, "top-k": 5}, "mine", {"top_k": 9, "stop": ["\n\n"]})
    assert resolved.config.temperature == 0.3 and resolved.sources["temperature"] == "preset mine"
    assert resolved.config.top_k == 9 and resolved.sources["top_k"] == "flag"
    assert resolved.config.stop == ("\n\n",)
    assert resolved.sources["top_p"] == "default"


def test_greedy_shorthand_and_type_checks() -> None:
    assert resolve(None, None, {"greedy": True}).config.greedy
    with pytest.raises(ConfigError, match="must be a number"):
        resolve({"temperature": "hot"}, "p", {})
    with pytest.raises(ConfigError, match="must be an integer"):
        resolve({"top_k": 2.5}, "p", {})
    with pytest.raises(ConfigError, match="unknown key"):
        resolve({"top_q": 1}, "p", {})


@pytest.mark.parametrize("make,field,reason", [
    (lambda: DecodingConfig(top_p=2.0), "top_p", "2.0 must be in (0, 1] (1.0 = off)"),
    (lambda: parse_keys({"max-new-tokens": "many"}), "max_new_tokens", "'many' must be an integer"),
    (lambda: parse_keys({"stop": 3}), "stop", "3 must be a string or a list of strings"),
])
def test_a_config_error_names_its_field_as_data(make, field, reason) -> None:
    """Front-ends (serve, presets) name the field in their own words from `field` and `reason`, not the text."""
    with pytest.raises(ConfigError) as info:
        make()
    assert (info.value.field, info.value.reason) == (field, reason)
    assert str(info.value) == f"invalid value for {field.replace('_', '-')}: {reason}"
