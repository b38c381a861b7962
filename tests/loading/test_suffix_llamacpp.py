"""The suffix draft on the llama.cpp engine: greedy equals plain greedy (the tiny GGUF, with a store across
requests, and the real Q4_1 file); sampling with every option on follows the engine's exact distribution
(chi-square, 10^4 samples on the tiny GGUF, one store shared by all of them)."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("llama_cpp")

from tables import chi_square_p_value  # noqa: E402
from test_engine_llamacpp_exact import (  # noqa: E402
    EVERY_OPTION,
    LENGTH,
    SAMPLES,
    exact_joint,
    load,
    logits_table,
    ours_greedy,
)
from tiny_gguf import write_tiny_llama  # noqa: E402

from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.decoding.speculative import FixedGamma, SuffixProposer, SuffixStore, speculative_tokens  # noqa: E402
from llmgen.decoding.speculative.runner import speculate  # noqa: E402
from llmgen.loading import models  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return load(str(write_tiny_llama(tmp_path_factory.mktemp("tiny-gguf-suffix") / "target.gguf", seed=1)))


def test_greedy_equals_plain_greedy_across_requests(tiny) -> None:
    config = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    store = SuffixStore()
    texts = ("abc abc abc abc ab", "hello there", "abc abc abc abc ab")
    results = []
    for text in texts:
        prompt = tiny.tokenizer(text)["input_ids"]
        results.append(speculate(tiny, None, prompt, config, gamma=4, suffix=store))
        assert results[-1].token_ids == ours_greedy(tiny, prompt, 40)
    first, third = results[0].stats, results[2].stats  # the third drafts from the first's output too
    assert third["accepted_tokens"] >= 0.9 * third["draft_tokens"] > 0
    assert third["target_forwards"] < first["target_forwards"]


def test_greedy_on_a_real_file_equals_plain_greedy() -> None:
    embedded = load(models.DEFAULT_MODEL)
    text = "Repeat this line twice: the quick brown fox jumps over the lazy dog near the river bank."
    prompt = embedded.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    config = DecodingConfig(temperature=0.0, max_new_tokens=48, ignore_eos=True)
    plain = ours_greedy(embedded, prompt, 48)
    store = SuffixStore()
    for _ in range(2):  # the second run drafts from the first's output too
        result = speculate(embedded, None, prompt, config, gamma="auto", suffix=store)
        assert result.stats["accepted_tokens"] > 0
        assert result.token_ids == plain


def test_sampling_with_every_option_follows_the_engines_exact_distribution(tiny) -> None:
    prompt = tiny.tokenizer("hello")["input_ids"]
    table = logits_table(tiny, prompt, LENGTH - 1)
    generator = make_generator(99)
    target_lm = tiny.engine.sequence()
    store = SuffixStore(budget=200, depth=4)
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        target_lm.rollback(len(prompt) - 1)
        rounds = []
        tokens = speculative_tokens(target_lm, SuffixProposer(store, match_min=1), prompt, EVERY_OPTION, generator,
                                    FixedGamma(2), LENGTH, on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert 0.05 < accepted / proposed < 0.95, (accepted, proposed)  # the verifier accepts and rejects
    p_value = chi_square_p_value(observed, exact_joint(table, prompt, EVERY_OPTION), SAMPLES)
    assert p_value > 1e-3, p_value
