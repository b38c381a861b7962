"""Each batched row is a correct sample: the joint distribution of a row's first 3 tokens, over 10^4
rows, matches the exact one (enumerated with the processor chain over the model's unbatched logits),
by a chi-square test. Rows decode in real batches of the char model: `-n N` (one prefill, expanded),
and prompt rows with different prompts and settings sharing continuous batches."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import torch
from stats_helpers import chi_square_pvalue

from llmgen.decoding.batch import Row, decode_rows, row_generator, sample_rows
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import distribution, penalty_context, token_counts
from llmgen.loading.engines.torch import RowCache
from llmgen.loading.loaded import ModelInfo

LENGTH = 3
SAMPLES = 10_000
VOCAB = 13
P_MIN = 1e-4  # one test in 10^4 fails by chance


def exact_joint(loaded, prompt: list[int], config: DecodingConfig) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) by enumeration, from logits of each context computed alone (no padding, batch 1)."""
    logits = {}
    with torch.inference_mode():
        for n in range(LENGTH):
            suffixes = list(itertools.product(range(VOCAB), repeat=n))
            batch = torch.tensor([[*prompt, *s] for s in suffixes])
            out = loaded.model(input_ids=batch).logits[:, -1].float()  # [VOCAB^n, vocab]
            logits.update({s: out[i] for i, s in enumerate(suffixes)})
    joint = {(): 1.0}
    for _ in range(LENGTH):
        following = {}
        for prefix, mass in joint.items():
            counts = token_counts(penalty_context(prompt, prefix, config), VOCAB)[None]
            probs = distribution(logits[prefix][None], counts, config)[0].double()
            for token in torch.nonzero(probs).flatten().tolist():
                following[(*prefix, token)] = mass * float(probs[token])
        joint = following
    return joint


def limits(loaded) -> ModelInfo:
    return ModelInfo(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)


SETTINGS = {
    "nucleus+presence": dict(temperature=0.8, top_p=0.9, presence_penalty=0.7),
    "top-k+repetition(all)": dict(top_k=4, repetition_penalty=1.6, penalty_scope="all"),
    "min-p+frequency": dict(temperature=1.3, min_p=0.1, frequency_penalty=1.0),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_n_samples_in_one_batch_have_the_exact_distribution(char_lm, name: str) -> None:
    config = DecodingConfig(seed=11, n=SAMPLES, max_new_tokens=LENGTH, ignore_eos=True, **SETTINGS[name])
    prompt = char_lm.tokenizer("abc")["input_ids"]
    results = sample_rows(RowCache(char_lm.model), prompt, config, limits(char_lm))
    samples = [tuple(r.token_ids) for r in results]
    assert chi_square_pvalue(samples, exact_joint(char_lm, prompt, config)) > P_MIN


def test_prompt_rows_with_mixed_settings_in_continuous_batches_have_the_exact_distribution(char_lm) -> None:
    """Two prompts of different lengths (so rows are padded) with two settings, interleaved, 500 at a time."""
    groups = [(char_lm.tokenizer("abc")["input_ids"], DecodingConfig(max_new_tokens=LENGTH, ignore_eos=True,
                                                                      **SETTINGS["nucleus+presence"])),
              (char_lm.tokenizer("hello.")["input_ids"], DecodingConfig(max_new_tokens=LENGTH, ignore_eos=True,
                                                                         **SETTINGS["top-k+repetition(all)"]))]
    rows = [Row(i, groups[i % 2][0], groups[i % 2][1], row_generator(5, i)) for i in range(2 * SAMPLES)]
    samples: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    decode_rows(RowCache(char_lm.model), rows, limits(char_lm), batch_size=500,
                on_done=lambda row, result: samples[row.key % 2].append(tuple(result.token_ids)))
    for g, (prompt, config) in enumerate(groups):
        assert len(samples[g]) == SAMPLES
        assert chi_square_pvalue(samples[g], exact_joint(char_lm, prompt, config)) > P_MIN, g
