"""The suffix draft under the real loop on the torch engine: greedy equals plain greedy token for token,
also when the store holds earlier requests (which it then drafts from); samples follow the target's
exact distribution with a store shared across all 10^4 samples and evicting as it goes (chi-square)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from tables import CONFIGS, LENGTH, SAMPLES, TableLM, chi_square_p_value, exact_joint, prompt_tables

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import Speculation, generate
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import FixedGamma, SuffixProposer, SuffixStore, speculate, speculative_tokens
from llmgen.loading import models

GREEDY = DecodingConfig(temperature=0, max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.mark.parametrize("config", [GREEDY, GREEDY.replace(frequency_penalty=0.7, repetition_penalty=1.2)],
                         ids=["plain", "penalties"])
@pytest.mark.parametrize("gamma", [1, 3, 40, "auto"])
def test_greedy_equals_plain_greedy_across_requests(target, config: DecodingConfig, gamma) -> None:
    store = SuffixStore()
    prompts = [target.tokenizer(text)["input_ids"] for text in ("abc abc ab", "h a", "abc abc ab")]
    results = [speculate(target, None, prompt, config, gamma=gamma, ngram_min=1, suffix=store) for prompt in prompts]
    for prompt, result in zip(prompts, results):
        assert result.token_ids == generate(target, prompt, config).token_ids
    # The third request repeats the first: every draft comes from the first's output and is accepted.
    third = results[2].stats
    assert third["accepted_tokens"] == third["draft_tokens"] > 0
    assert third["target_forwards"] < results[0].stats["target_forwards"] or gamma == 1


def test_greedy_on_the_wide_tokenizer(wide_model: Path) -> None:
    loaded = models.load(str(wide_model))
    prompt = loaded.tokenizer("The cat sat on the mat. The cat sat on the mat. The cat")["input_ids"]
    config = GREEDY.replace(max_new_tokens=16)
    expected = generate(loaded, prompt, config).token_ids
    store = SuffixStore(budget=40)  # the second and third runs evict the first
    for gamma in (1, 3, 30):
        speculation = Speculation(None, gamma, ngram_min=1, suffix=store)
        assert generate(loaded, prompt, config, speculation=speculation).token_ids == expected
    assert store.held <= 40 + len(prompt) + config.max_new_tokens


@pytest.fixture(scope="module")
def tables(char_model: Path, draft_model: Path) -> dict[str, dict]:
    return prompt_tables(char_model, draft_model, {"ngram": "habhdahab"})


EVERY_OPTION = DecodingConfig(temperature=0.9, top_k=8, top_p=0.95, min_p=0.02, presence_penalty=0.6,
                              frequency_penalty=0.4, repetition_penalty=1.3, max_new_tokens=LENGTH)


@pytest.mark.parametrize("config_name", ["every-option", "minp-repetition-scope-all-window"])
def test_samples_follow_the_target_distribution_with_a_shared_store(tables, config_name: str) -> None:
    config = EVERY_OPTION if config_name == "every-option" else CONFIGS[config_name]
    data = tables["ngram"]
    prompt, target_table = data["prompt"], data["target"]
    generator = make_generator(4321)
    store = SuffixStore(budget=300, depth=4)  # learns from every earlier sample, evicting the oldest
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        rounds = []
        tokens = speculative_tokens(TableLM(target_table), SuffixProposer(store, match_min=1), prompt, config,
                                    generator, FixedGamma(2), LENGTH, on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert 0.1 < accepted / proposed < 0.9, (accepted, proposed)  # the verifier accepts and rejects
    assert store.held <= 300 + len(prompt) + LENGTH
    p_value = chi_square_p_value(observed, exact_joint(target_table, prompt, config), SAMPLES)
    assert p_value > 1e-3, p_value
