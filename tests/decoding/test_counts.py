"""`counts.penalty_counts`, the one count function of every decoding path, against a Counter per row."""

from __future__ import annotations

from collections import Counter

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.counts import draft_counts, penalty_counts
from llmgen.decoding.processors import penalty_context

VOCAB = 7
tokens = st.lists(st.integers(0, VOCAB - 1), max_size=9)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(tokens, tokens), min_size=1, max_size=5), scope=st.sampled_from(["generated", "all"]),
       window=st.integers(0, 4))
def test_each_row_counts_its_own_penalty_context(rows, scope, window) -> None:
    config = DecodingConfig(frequency_penalty=0.5, penalty_scope=scope, penalty_window=window)
    counts = penalty_counts(rows, config, VOCAB)
    assert counts is not None and counts.shape == (len(rows), VOCAB) and counts.dtype == torch.float32
    for r, (prompt, after) in enumerate(rows):
        expected = Counter(penalty_context(prompt, after, config))
        assert counts[r].tolist() == [float(expected[j]) for j in range(VOCAB)]


def test_draft_position_i_counts_the_first_i_draft_tokens() -> None:
    config = DecodingConfig(presence_penalty=1.0)
    counts = draft_counts([1], [2], [3, 3, 4], config, VOCAB)
    assert counts.tolist() == [
        [0, 0, 1, 0, 0, 0, 0],  # before the draft: the output so far (scope 'generated')
        [0, 0, 1, 1, 0, 0, 0],
        [0, 0, 1, 2, 0, 0, 0],
        [0, 0, 1, 2, 1, 0, 0],  # the bonus position: every draft token
    ]
    assert draft_counts([1], [2], [3], DecodingConfig(), VOCAB) is None
