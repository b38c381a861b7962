"""The replay behind the prompt-lookup bound: it must count the rounds the real loop runs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from llmgen.bench.lookup_bound import bound, copy_oracle, lookup_draft, replay
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.speculative import FixedGamma, NgramProposer, SpeculativeStats, speculative_tokens

VOCAB = 8


class ScriptedLM:
    """A target whose greedy continuation of `prompt` is `script`, whatever the draft proposes."""

    def __init__(self, prompt: Sequence[int], script: Sequence[int]) -> None:
        self.full = [*prompt, *script]
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        start = len(self.tokens)
        self.tokens.extend(token_ids)
        rows = []
        for end in range(start + 1, len(self.tokens) + 1):
            row = torch.zeros(VOCAB)
            row[self.full[end] if end < len(self.full) else 0] = 10.0
            rows.append(row)
        return torch.stack(rows if all_logits else rows[-1:])  # [k or 1, vocab]

    def rollback(self, length: int) -> None:
        del self.tokens[length:]


PROMPT = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
SCRIPTS = [
    [4, 5, 6, 7, 1, 2, 3, 4, 5, 0],  # copies the prompt, then leaves it
    [4, 5, 0, 6, 7, 1, 2, 6, 7, 1, 2, 3, 4],  # copies with edits
    [0, 0, 0, 0, 0, 0],  # a repetition the lookup learns from its own output
]


@pytest.mark.parametrize("gamma", [1, 3, 8])
@pytest.mark.parametrize("script", SCRIPTS)
def test_replay_counts_the_forwards_of_the_real_loop(script: list[int], gamma: int) -> None:
    stats = SpeculativeStats()
    out = [t.id for t in speculative_tokens(ScriptedLM(PROMPT, script), NgramProposer(4, 2), PROMPT,
                                            DecodingConfig(temperature=0.0), torch.Generator(), FixedGamma(gamma),
                                            len(script), stats)]
    assert out == script
    sizes = replay(PROMPT, script, lookup_draft(gamma, 4, 2))
    assert len(sizes) == stats.target_forwards
    assert sum(k - 1 for k in sizes) == stats.draft_tokens


def test_the_copy_oracle_proposes_only_what_is_accepted() -> None:
    assert replay(PROMPT, [4, 5, 6, 7, 9], copy_oracle(16)) == [5]  # 4 5 6 7 copied, 9 from the target: one forward
    assert replay(PROMPT, [4, 5, 6, 7, 9], copy_oracle(2)) == [3, 2]  # at most 2 per round
    assert replay(PROMPT, [0, 0, 0], copy_oracle(16)) == [1, 2]  # nothing to copy, then its own output


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_lookup_draft_beats_the_copy_oracle(script: list[int]) -> None:
    runs = [(PROMPT, script)]
    oracle = bound("oracle", runs, copy_oracle(8), v=lambda k: 1.0 + 0.1 * (k - 1))
    for gamma in (1, 2, 4, 8):
        ours = bound("ours", runs, lookup_draft(gamma, 4, 1), v=lambda k: 1.0 + 0.1 * (k - 1))
        assert ours.rounds >= oracle.rounds
        assert ours.speedup <= oracle.speedup + 1e-9
    assert oracle.per_run == (oracle.speedup,)
