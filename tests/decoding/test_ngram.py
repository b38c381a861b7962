"""The n-gram (prompt lookup) draft."""

from __future__ import annotations

import pytest

from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative.proposers import NgramProposer, prompt_lookup
from llmgen.errors import UsageError


def test_continues_the_match_of_the_last_tokens() -> None:
    #         0  1  2  3  4  5  6  7
    tokens = [1, 2, 3, 4, 5, 9, 2, 3]
    assert prompt_lookup(tokens, 3, ngram_max=2, ngram_min=1) == [4, 5, 9]


def test_longest_ngram_first() -> None:
    # The 1-gram [3] last occurred at index 6 (followed by 8); the 2-gram [2, 3] at index 1 (followed by 4).
    tokens = [1, 2, 3, 4, 5, 7, 3, 8, 2, 3]
    assert prompt_lookup(tokens, 2, ngram_max=2, ngram_min=1) == [4, 5]
    assert prompt_lookup(tokens, 2, ngram_max=1, ngram_min=1) == [8, 2]


def test_most_recent_occurrence_wins() -> None:
    tokens = [5, 6, 1, 5, 6, 2, 5, 6]
    assert prompt_lookup(tokens, 1, ngram_max=2, ngram_min=2) == [2]


def test_ngram_min_is_respected() -> None:
    tokens = [1, 2, 3, 9, 3]  # only a 1-gram match
    assert prompt_lookup(tokens, 2, ngram_max=3, ngram_min=2) == []
    assert prompt_lookup(tokens, 2, ngram_max=3, ngram_min=1) == [9, 3]


def test_proposal_is_cut_at_gamma_and_at_the_end() -> None:
    tokens = [1, 2, 3, 4, 1, 2]
    assert prompt_lookup(tokens, 10, ngram_max=2, ngram_min=1) == [3, 4, 1, 2]
    assert prompt_lookup(tokens, 1, ngram_max=2, ngram_min=1) == [3]
    assert prompt_lookup(tokens, 0, ngram_max=2, ngram_min=1) == []


def test_a_repeating_tail_may_overlap_itself() -> None:
    tokens = [7, 7, 7, 7]
    assert prompt_lookup(tokens, 3, ngram_max=3, ngram_min=1) == [7]  # [7,7,7] at 0, then only 7 follows


def test_no_match_and_short_inputs() -> None:
    assert prompt_lookup([1, 2, 3, 4], 3, ngram_max=3, ngram_min=1) == []
    assert prompt_lookup([1], 3, ngram_max=3, ngram_min=1) == []
    assert prompt_lookup([], 3, ngram_max=3, ngram_min=1) == []


def test_proposer_is_one_hot_over_prompt_and_output() -> None:
    proposer = NgramProposer(ngram_max=3, ngram_min=1)
    proposal = proposer.propose([1, 2, 3, 4], [1, 2], 2, make_generator(0))
    assert proposal.tokens == [3, 4]
    assert proposal.q is None


def test_bad_ngram_bounds() -> None:
    with pytest.raises(UsageError):
        NgramProposer(ngram_max=1, ngram_min=2)
    with pytest.raises(UsageError):
        NgramProposer(ngram_max=2, ngram_min=0)
