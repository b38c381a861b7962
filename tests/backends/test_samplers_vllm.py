"""`--backend vllm` and the new stages: what vLLM has maps one to one, the rest is refused by name."""

from __future__ import annotations

import pytest

from llmgen.backends import vllm as vb
from llmgen.decoding.config import LLAMACPP_ORDER, DecodingConfig
from llmgen.errors import UsageError


def test_token_controls_map_to_vllms_sampling_params() -> None:
    config = DecodingConfig(logit_bias=((5, 2.0), (9, -100.0)), min_tokens=4, stop_token_ids=(7,),
                            bad_words=("foo", "bar baz"), allowed_token_ids=(1, 5, 7, 9))
    params = vb.translate(config, "/m", budget=16).params
    assert params["logit_bias"] == {5: 2.0, 9: -100.0}
    assert params["min_tokens"] == 4
    assert params["stop_token_ids"] == [7]
    assert params["bad_words"] == ["foo", "bar baz"]
    assert params["allowed_token_ids"] == [1, 5, 7, 9]


def test_off_values_add_nothing() -> None:
    params = vb.translate(DecodingConfig(), "/m", budget=16).params
    assert not {"logit_bias", "min_tokens", "stop_token_ids", "bad_words", "allowed_token_ids"} & set(params)


@pytest.mark.parametrize("config,needle", [
    (DecodingConfig(typical_p=0.9), "--typical-p"),
    (DecodingConfig(epsilon_cutoff=0.01), "--epsilon-cutoff"),
    (DecodingConfig(eta_cutoff=0.01), "--eta-cutoff"),
    (DecodingConfig(top_n_sigma=1.0), "--top-n-sigma"),
    (DecodingConfig(dry_multiplier=0.8), "DRY"),
    (DecodingConfig(xtc_probability=0.5), "XTC"),
    (DecodingConfig(mirostat=2), "--mirostat"),
    (DecodingConfig(dynatemp_range=0.5), "--dynatemp-range"),
    (DecodingConfig(reasoning_budget=10), "--reasoning-budget"),
    (DecodingConfig(samplers=LLAMACPP_ORDER), "--samplers"),
])
def test_stages_vllm_lacks_are_refused_by_name(config: DecodingConfig, needle: str) -> None:
    with pytest.raises(UsageError) as caught:
        vb.translate(config, "/m", budget=8)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("config,needle", [
    (DecodingConfig(logit_bias=((5, 1.0),)), "--logit-bias"),
    (DecodingConfig(min_tokens=2), "--min-tokens"),
    (DecodingConfig(bad_words=("x",)), "--bad-word"),
    (DecodingConfig(allowed_token_ids=(1, 2)), "--allowed-token-id"),
])
def test_logits_controls_are_refused_with_vllms_speculative_decoding(config: DecodingConfig, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        vb.translate(config, "/m", budget=8, draft=vb.Draft("ngram", 3))
    params = vb.translate(DecodingConfig(stop_token_ids=(3,)), "/m", budget=8, draft=vb.Draft("ngram", 3)).params
    assert params["stop_token_ids"] == [3]  # a stop rule, not a logits processor: kept


def test_token_controls_with_beams_are_refused() -> None:
    with pytest.raises(UsageError, match="beam"):
        vb.translate(DecodingConfig(num_beams=2, temperature=0.0, length_penalty=0.0, min_tokens=3), "/m", budget=8)
