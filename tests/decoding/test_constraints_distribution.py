"""Constrained speculative sampling keeps the *constrained* target distribution exactly.

The setting of tests/test_speculative_distribution.py (the tiny char models, logits served from a
table, the real loop, proposers and verifier), with a constraint: the language
{ab, aba, abd, ba, bad, h, "h a", hab}. Its matcher masks q at every draft position and p at every
target row, is advanced along the draft and rolled back after each round; an n-gram draft token the
language forbids ends the draft. The joint distribution of 3 tokens (end-of-sequence, then only
end-of-sequence, once a word is complete) is compared with the exact one, enumerated by applying the
mask and the processor chain at every prefix, by a chi-square test, with penalties and top-p on.

The matcher is either `TrieMatcher`, a hand-written matcher with the interface of
`constraints.Matcher` (always runs: the verifier logic is what is under test), or llguidance's, on
a byte-level tokenizer of the same 13 tokens (runs when the `constrained` extra is installed).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tables import LENGTH, SAMPLES, VOCAB, TableLM, chi_square_p_value, prompt_tables

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import distribution, penalty_context, token_counts
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, NgramProposer, speculative_tokens
from llmgen.decoding.speculative.proposers import ForcedFirst

EOS = 1
CHARS = "abcdefgh ."  # token 3 + i is CHARS[i], as in conftest
WORDS = ["ab", "aba", "abd", "ba", "bad", "h", "h a", "hab"]
CONFIG = DecodingConfig(temperature=0.9, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.4,
                        max_new_tokens=LENGTH)
PROMPTS = {"model": "h ab", "ngram": "habhdahab", "forced": "habhdahab"}


class TrieMatcher:
    """A hand-written matcher over the finite language WORDS (tokens are characters)."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def allowed(self) -> torch.Tensor:
        mask = torch.zeros(VOCAB, dtype=torch.bool)
        if EOS in self.taken:
            mask[EOS] = True
            return mask
        prefix = "".join(CHARS[t - 3] for t in self.taken)
        for word in WORDS:
            if word == prefix:
                mask[EOS] = True
            elif word.startswith(prefix):
                mask[3 + CHARS.index(word[len(prefix)])] = True
        return mask

    def advance(self, token: int) -> None:
        assert bool(self.allowed()[token]), (self.taken, token)
        self.taken.append(token)

    def rollback(self, count: int) -> None:
        if count:
            del self.taken[-count:]


def llguidance_matcher():
    """llguidance's matcher for the same language, over a byte-level tokenizer of the 13 char tokens."""
    llg = pytest.importorskip("llguidance")
    from llmgen.decoding.constraints import Constraint

    class CharTokens:
        eos_token_id, bos_token_id = EOS, 0
        tokens = [b"<s>", b"</s>", b"<unk>", *(c.encode() for c in CHARS)]
        special_token_ids = [0, 1, 2]

        def __call__(self, text):
            text = text.decode() if isinstance(text, bytes) else text
            return [3 + CHARS.index(c) for c in text]

    tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(CharTokens()))
    grammar = llg.LLMatcher.grammar_from_regex("|".join(WORDS))
    assert llg.LLMatcher.validate_grammar(grammar, tokenizer) == ""
    return Constraint(grammar, tokenizer, frozenset({EOS}), VOCAB).matcher


def exact_constrained_joint(table: dict, prompt: list[int]) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) of plain constrained sampling, by enumeration (mask, then the chain)."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        following = {}
        for prefix, mass in joint.items():
            matcher = TrieMatcher()
            for token in prefix:
                matcher.advance(token)
            counts = token_counts(penalty_context(prompt, prefix, CONFIG), VOCAB)[None]
            probs = distribution(table[(*prompt, *prefix)][None], counts, CONFIG, matcher.allowed()[None])[0]
            for token in torch.nonzero(probs).flatten().tolist():
                following[(*prefix, token)] = mass * float(probs[token])
        joint = following
    return joint


@pytest.fixture(scope="module")
def tables(char_model: Path, draft_model: Path) -> dict[str, dict]:
    return prompt_tables(char_model, draft_model, PROMPTS)


# NOTE: four runs of 10^4 samples (about 12 s each): the hand-written matcher with both drafts; llguidance's
# with the model draft, where q is masked too, and with its forced tokens ("h " forces "a") proposed first.
@pytest.mark.parametrize("kind,matcher_kind", [("model", "trie"), ("ngram", "trie"), ("model", "llguidance"),
                                               ("forced", "llguidance")])
def test_constrained_speculative_samples_follow_the_constrained_target(tables, kind: str, matcher_kind: str) -> None:
    new_matcher = TrieMatcher if matcher_kind == "trie" else llguidance_matcher()
    data = tables[kind]
    prompt, target_table = data["prompt"], data["target"]
    generator = make_generator(4321)
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        matcher = new_matcher()
        if kind == "model":
            proposer = DraftModelProposer(TableLM(data["draft"]), CONFIG, context_length=64, matcher=matcher)
        else:
            proposer = NgramProposer(ngram_max=2, ngram_min=1)
            if kind == "forced":
                proposer = ForcedFirst(proposer, matcher)
        rounds = []
        tokens = speculative_tokens(TableLM(target_table), proposer, prompt, CONFIG, generator, FixedGamma(2),
                                    LENGTH, on_round=rounds.append, matcher=matcher)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert proposed > 0 and 0 < accepted < proposed, (accepted, proposed)  # both outcomes exercised
    expected = exact_constrained_joint(target_table, prompt)
    assert all("".join(CHARS[t - 3] for t in cell if t != EOS) in WORDS for cell in observed if EOS in cell)
    p_value = chi_square_p_value(observed, expected, SAMPLES)
    assert p_value > 1e-3, p_value


def test_the_ngram_draft_is_cut_at_the_first_forbidden_token() -> None:
    from llmgen.decoding.speculative.loop import constrain_draft

    matcher = TrieMatcher()
    q = torch.full((3, VOCAB), 1.0 / VOCAB)
    a, b, c = 3, 4, 5
    draft, q_cut, masks = constrain_draft(matcher, [a, b, c], q)
    assert draft == [a, b] and q_cut.shape == (2, VOCAB) and masks.shape == (3, VOCAB)
    assert matcher.taken == [a, b]  # advanced along what is kept
    assert masks[2].nonzero().flatten().tolist() == [EOS, a, 6]  # after "ab": end, "aba", "abd"
