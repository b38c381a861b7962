"""Beam search equals HF `generate(num_beams=B, do_sample=False)`: the same tokens, hypothesis for
hypothesis, and the same scores (`sequences_scores`) to float32 precision. Over B, length penalties,
early-stopping modes, n-gram sizes, K, EOS sets and penalties; on tiny models and the embedded SmolLM2.

The char model rarely ends on its own EOS, so many cases declare "." (id 12) an end-of-sequence token:
hypotheses then finish at every length, which is what early stopping and length penalties act on.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from llmgen.decoding.beam import beam_search
from llmgen.decoding.config import DecodingConfig

DOT = 12  # "." in the char tokenizer
HF_EARLY = {"false": False, "true": True, "never": "never"}


def hf_beam(loaded, prompt_ids: list[int], config: DecodingConfig, eos: frozenset[int],
            processors: list[LogitsProcessor] | None = None) -> list[tuple[list[int], float]]:
    """HF's K best hypotheses: (generated tokens up to the first EOS, score)."""
    ids = torch.tensor([prompt_ids])
    extra = {"repetition_penalty": config.repetition_penalty} if config.penalty_scope == "all" else {}
    out = loaded.model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=config.num_beams,
        num_return_sequences=config.n, max_new_tokens=config.max_new_tokens,
        length_penalty=config.length_penalty, early_stopping=HF_EARLY[config.early_stopping],
        no_repeat_ngram_size=config.no_repeat_ngram_size or None, eos_token_id=sorted(eos),
        output_scores=True, return_dict_in_generate=True,
        logits_processor=LogitsProcessorList(processors or []), **extra)
    hypotheses = []
    for row, score in zip(out.sequences, out.sequences_scores):
        tokens = row[len(prompt_ids):].tolist()
        ends = [i for i, t in enumerate(tokens) if t in eos]
        hypotheses.append((tokens[:ends[0] + 1] if ends else tokens, float(score)))
    return hypotheses


def ours(loaded, prompt_ids: list[int], config: DecodingConfig, eos: frozenset[int]) -> list[tuple[list[int], float]]:
    found = beam_search(loaded.engine, prompt_ids, config, eos, config.max_new_tokens)
    return [(h.token_ids, h.score) for h in found.hypotheses[:config.n]]


def assert_same(got: list[tuple[list[int], float]], expected: list[tuple[list[int], float]]) -> None:
    assert [tokens for tokens, _ in got] == [tokens for tokens, _ in expected]
    torch.testing.assert_close(torch.tensor([s for _, s in got]), torch.tensor([s for _, s in expected]),
                               rtol=1e-5, atol=1e-5)


class OwnTokensPenalty(LogitsProcessor):
    """Oracle for llmgen's penalties in HF's beam loop: each row is one beam; counts come from that
    row's generated tokens (last `window`), written out with a Counter, independently of llmgen."""

    def __init__(self, prompt_len: int, config: DecodingConfig) -> None:
        self.prompt_len, self.config = prompt_len, config

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        c = self.config
        scores = scores.clone()
        for row, tokens in enumerate(input_ids[:, self.prompt_len:].tolist()):
            if c.penalty_window:
                tokens = tokens[-c.penalty_window:]
            for token, count in Counter(tokens).items():
                value = scores[row, token]
                value = value / c.repetition_penalty if value > 0 else value * c.repetition_penalty
                scores[row, token] = value - count * c.frequency_penalty - c.presence_penalty
        return scores


# (prompt, B, K, length penalty, early stopping, no-repeat n-gram size), EOS = {"</s>", "."}
GRID = [
    ("abc", 2, 1, 1.0, "false", 0),
    ("abc", 4, 4, 1.0, "true", 0),
    ("abc", 5, 5, 1.0, "never", 0),
    ("abc", 5, 3, 1.0, "false", 0),
    ("bead", 2, 2, 1.0, "false", 0),
    ("bead", 2, 2, 1.0, "true", 0),
    ("bead", 2, 2, 1.0, "never", 0),
    ("bead", 4, 2, 2.0, "false", 2),
    ("bead", 5, 5, 0.0, "never", 3),
    ("hello.", 4, 3, -0.5, "false", 0),
    ("hello.", 5, 2, 2.0, "true", 2),
    ("hello.", 2, 1, 0.0, "never", 1),
    ("a bad cafe", 4, 4, 1.0, "never", 3),
    ("a bad cafe", 5, 1, 0.5, "true", 0),
    ("h", 4, 2, -0.5, "never", 2),
    ("h", 5, 5, 2.0, "false", 3),
]


@pytest.mark.parametrize("prompt,beams,k,length_penalty,early,ngram", GRID)
def test_equals_hf_on_char_model(char_lm, prompt, beams, k, length_penalty, early, ngram) -> None:
    ids = char_lm.tokenizer(prompt)["input_ids"]
    eos = frozenset({1, DOT})
    config = DecodingConfig(num_beams=beams, n=k, length_penalty=length_penalty, early_stopping=early,
                            no_repeat_ngram_size=ngram, max_new_tokens=20)
    assert_same(ours(char_lm, ids, config, eos), hf_beam(char_lm, ids, config, eos))


def test_early_stopping_modes_differ_and_each_equals_hf(char_lm) -> None:
    """'abc', B = 5: true stops at the first 5 finished, false at the heuristic, never runs to the end."""
    ids = char_lm.tokenizer("abc")["input_ids"]
    eos = frozenset({DOT})
    results = {}
    for early in ("false", "true", "never"):
        config = DecodingConfig(num_beams=5, n=5, early_stopping=early, max_new_tokens=20)
        found = beam_search(char_lm.engine, ids, config, eos, 20)
        results[early] = found
        assert_same([(h.token_ids, h.score) for h in found.hypotheses], hf_beam(char_lm, ids, config, eos))
    assert results["true"].steps < results["false"].steps < results["never"].steps == 20
    assert len({str([h.token_ids for h in r.hypotheses]) for r in results.values()}) == 3


@pytest.mark.parametrize("length_penalty", [-0.5, 2.0])
def test_a_hypothesis_that_ends_early_competes_on_its_length_penalised_score(char_lm, length_penalty) -> None:
    """With the prompt 'h', "</s>" is the model's first choice: a 1-token hypothesis. A negative length
    penalty keeps it first; a strong positive one ranks longer hypotheses above it."""
    ids = char_lm.tokenizer("h")["input_ids"]
    eos = frozenset({1})
    config = DecodingConfig(num_beams=4, n=4, length_penalty=length_penalty, max_new_tokens=20)
    got = ours(char_lm, ids, config, eos)
    assert_same(got, hf_beam(char_lm, ids, config, eos))
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    rank = [tokens for tokens, _ in got].index([1]) if [1] in [t for t, _ in got] else None
    if length_penalty < 0:
        assert rank == 0
    else:
        assert rank != 0 and all(len(tokens) == 20 for tokens, _ in got)


def test_hypotheses_finish_with_their_reason(char_lm) -> None:
    ids = char_lm.tokenizer("bead")["input_ids"]
    config = DecodingConfig(num_beams=4, n=4, max_new_tokens=20)
    found = beam_search(char_lm.engine, ids, config, frozenset({DOT}), 20)
    for h in found.hypotheses:
        assert h.finish_reason == ("eos" if h.token_ids[-1] == DOT else "length")
        assert DOT not in h.token_ids[:-1]
        assert h.finish_reason == "eos" or len(h.token_ids) == 20


def test_ignore_eos_runs_every_beam_to_the_budget(char_lm) -> None:
    ids = char_lm.tokenizer("h")["input_ids"]
    config = DecodingConfig(num_beams=3, n=3, max_new_tokens=10, ignore_eos=True)
    found = beam_search(char_lm.engine, ids, config, frozenset({1, DOT}), 10)
    assert all(len(h.token_ids) == 10 and h.finish_reason == "length" for h in found.hypotheses)
    assert_same([(h.token_ids, h.score) for h in found.hypotheses], hf_beam(char_lm, ids, config, frozenset()))


@pytest.mark.parametrize("penalty", [1.3, 2.0])
def test_repetition_penalty_over_prompt_and_beam_equals_hf(char_lm, penalty) -> None:
    ids = char_lm.tokenizer("abcabc")["input_ids"]
    eos = frozenset({1, DOT})
    config = DecodingConfig(num_beams=4, n=2, max_new_tokens=16, repetition_penalty=penalty, penalty_scope="all")
    assert_same(ours(char_lm, ids, config, eos), hf_beam(char_lm, ids, config, eos))


@pytest.mark.parametrize("options", [
    {"repetition_penalty": 1.5},
    {"frequency_penalty": 0.8, "presence_penalty": 0.4},
    {"frequency_penalty": 1.0, "repetition_penalty": 1.2, "penalty_window": 4},
    {"presence_penalty": -0.5, "no_repeat_ngram_size": 2},
])
def test_penalties_count_each_beams_own_generated_tokens(char_lm, options) -> None:
    ids = char_lm.tokenizer("bead")["input_ids"]
    eos = frozenset({1})
    config = DecodingConfig(num_beams=4, n=3, max_new_tokens=16, **options)
    expected = hf_beam(char_lm, ids, config, eos, [OwnTokensPenalty(len(ids), config)])
    assert_same(ours(char_lm, ids, config, eos), expected)


@pytest.mark.parametrize("beams,k,ngram,early", [(4, 2, 0, "false"), (5, 5, 2, "never"), (2, 2, 3, "true")])
def test_equals_hf_on_wide_model(wide_lm, beams, k, ngram, early) -> None:
    ids = wide_lm.tokenizer("The capital of France is")["input_ids"]
    config = DecodingConfig(num_beams=beams, n=k, no_repeat_ngram_size=ngram, early_stopping=early, max_new_tokens=12)
    assert_same(ours(wide_lm, ids, config, wide_lm.eos_token_ids), hf_beam(wide_lm, ids, config, wide_lm.eos_token_ids))


@pytest.mark.parametrize("prompt,beams,k,length_penalty,ngram", [
    ("The three primary colors are", 4, 2, 1.0, 0),
    ("Once upon a time, there was", 5, 3, 2.0, 2),
    ("Q: What is 2 + 2?\nA:", 2, 2, 0.0, 0),
])
def test_equals_hf_on_embedded_model(embedded, prompt, beams, k, length_penalty, ngram) -> None:
    ids = embedded.tokenizer(prompt)["input_ids"]
    config = DecodingConfig(num_beams=beams, n=k, length_penalty=length_penalty, no_repeat_ngram_size=ngram,
                            max_new_tokens=8)
    assert_same(ours(embedded, ids, config, embedded.eos_token_ids),
                hf_beam(embedded, ids, config, embedded.eos_token_ids))


def test_embedded_model_chat_prompt_with_eos(embedded) -> None:
    ids = embedded.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."}],
                                                 add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    config = DecodingConfig(num_beams=4, n=4, max_new_tokens=10, early_stopping="true")
    assert_same(ours(embedded, ids, config, embedded.eos_token_ids),
                hf_beam(embedded, ids, config, embedded.eos_token_ids))


def test_one_forward_per_step_and_none_after_the_last(char_lm) -> None:
    calls: list[tuple[int, int]] = []

    class CountingEngine:
        """The torch engine, with each forward of its rows recorded as (rows, tokens per row)."""
        device = char_lm.engine.device
        name = "torch"

        def rows(self, capacity=1):
            inner = char_lm.engine.rows()

            class Counted:
                def add(self, prompts):
                    calls.append((len(prompts), max(map(len, prompts))))
                    return inner.add(prompts)

                def step(self, tokens):
                    calls.append((tokens.shape[0], 1))
                    return inner.step(tokens)

                def select(self, indices):
                    inner.select(indices)

                rows = property(lambda self: inner.rows)
            return Counted()

    ids = char_lm.tokenizer("abc")["input_ids"]
    found = beam_search(CountingEngine(), ids, DecodingConfig(num_beams=3, max_new_tokens=7), frozenset(), 7)
    assert found.steps == 7
    assert calls == [(1, len(ids))] + [(3, 1)] * 6  # the prompt once, then one row per beam


def test_candidates_are_the_best_beam_token_pairs_in_order() -> None:
    from llmgen.decoding.beam import candidates

    log_probs = torch.log(torch.tensor([[0.70, 0.20, 0.10],
                                        [0.05, 0.05, 0.90]]))  # [B=2, V=3]
    scores = torch.tensor([0.0, -1.0])
    top, parents, tokens = candidates(log_probs, scores, keep=4)
    # totals: beam 0: log .7 = -0.36, log .2 = -1.61, log .1 = -2.30; beam 1: -1 + log .9 = -1.11, ...
    assert parents.tolist() == [0, 1, 0, 0] and tokens.tolist() == [0, 2, 1, 2]
    torch.testing.assert_close(top, torch.tensor([0.70, 0.90, 0.20, 0.10]).log() + torch.tensor([0, -1.0, 0, 0]))
    # a dead beam (-1e9) never supplies a candidate while a live one has tokens left
    _, parents, _ = candidates(log_probs, torch.tensor([0.0, -1e9]), keep=3)
    assert parents.tolist() == [0, 0, 0]  # the prompt once, then one row per beam
