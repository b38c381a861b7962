"""Counts of a speculative run, and what they imply.

- acceptance_rate = accepted / proposed draft tokens (as reported by HF and vLLM).
- alpha = accepted / tested, where a round tests its accepted tokens and its first rejected one:
  the estimator of the paper's per-token acceptance probability α (tokens after a rejection are never
  tested, so accepted / proposed underestimates α).
- expected_tokens_per_forward: E = (1 - α^(γ+1)) / (1 - α) for the rounds that proposed tokens (γ their
  mean draft length), and 1 for target forwards without a proposal; to compare with
  tokens_per_target_forward, the measured value.
- acceptance_histogram[j] = rounds in which exactly j draft tokens were accepted (rounds that proposed
  nothing are not counted).
- gamma_histogram[g] = rounds that proposed g draft tokens (0: a plain step, chosen by `--gamma auto` or
  because the n-gram draft found no match).
- With `--gamma auto`, what the policy expected against what happened, both as a speedup over its
  estimate s₁ of a plain step's seconds at each round:
      expected_speedup = Σ E_r · s₁ / Σ T_r         (E_r, T_r: the round's expected tokens and seconds)
      realised_speedup = Σ n_r · s₁ / Σ seconds_r   (n_r: the tokens it emitted; seconds_r: measured)
  The realised one is the policy's own view; the bench's ratio to a plain run is the real one.

Target forwards are the verification forwards, each of which yields 1..γ+1 tokens; the prompt's prefill
is not one of them (plain decoding makes one forward per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmgen.decoding.speculative.gamma import Expectation, expected_tokens


@dataclass
class SpeculativeStats:
    target_forwards: int = 0
    proposing_rounds: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    tested_tokens: int = 0
    tokens: int = 0  # tokens handed to the consumer
    histogram: list[int] = field(default_factory=list)
    gammas: list[int] = field(default_factory=list)  # [g] = rounds that proposed g tokens (0: a plain step)
    # Σ E_r·s₁ and Σ T_r (expected), Σ n_r·s₁ and Σ seconds_r (realised), over the rounds with an expectation
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def record(self, proposed: int, accepted: int, expected: Expectation | None = None, seconds: float = 0.0) -> None:
        """One round: `proposed` draft tokens of which `accepted` passed; what the policy expected of it
        (`--gamma auto`), and its measured `seconds` (draft and verify)."""
        self.target_forwards += 1
        if len(self.gammas) <= proposed:
            self.gammas.extend([0] * (proposed + 1 - len(self.gammas)))
        self.gammas[proposed] += 1
        if expected is not None:
            plain = expected.plain_seconds
            for i, value in enumerate((expected.tokens * plain, expected.seconds, (accepted + 1) * plain, seconds)):
                self.sums[i] += value
        if proposed == 0:
            return
        self.proposing_rounds += 1
        self.draft_tokens += proposed
        self.accepted_tokens += accepted
        self.tested_tokens += accepted + (1 if accepted < proposed else 0)
        if len(self.histogram) <= proposed:
            self.histogram.extend([0] * (proposed + 1 - len(self.histogram)))
        self.histogram[accepted] += 1

    @property
    def alpha(self) -> float | None:
        return self.accepted_tokens / self.tested_tokens if self.tested_tokens else None

    @property
    def expected_tokens_per_forward(self) -> float | None:
        if not self.target_forwards:
            return None
        alpha = self.alpha
        if alpha is None:
            return 1.0
        mean_gamma = self.draft_tokens / self.proposing_rounds
        plain = self.target_forwards - self.proposing_rounds
        return (self.proposing_rounds * expected_tokens(alpha, mean_gamma) + plain) / self.target_forwards

    @property
    def expected_speedup(self) -> float | None:
        return self.sums[0] / self.sums[1] if self.sums[1] > 0 else None

    @property
    def realised_speedup(self) -> float | None:
        return self.sums[2] / self.sums[3] if self.sums[3] > 0 else None

    def as_dict(self) -> dict[str, Any]:
        expected = self.expected_tokens_per_forward
        expected_speedup, realised_speedup = self.expected_speedup, self.realised_speedup
        return {
            "target_forwards": self.target_forwards,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": round(self.accepted_tokens / self.draft_tokens, 4) if self.draft_tokens else None,
            "alpha": round(self.alpha, 4) if self.alpha is not None else None,
            "tokens_per_target_forward": (round(self.tokens / self.target_forwards, 4)
                                          if self.target_forwards else None),
            "expected_tokens_per_forward": round(expected, 4) if expected is not None else None,
            "mean_gamma": round(self.draft_tokens / self.proposing_rounds, 3) if self.proposing_rounds else None,
            "acceptance_histogram": list(self.histogram),
            "gamma_histogram": list(self.gammas),
            "expected_speedup": None if expected_speedup is None else round(expected_speedup, 4),
            "realised_speedup": None if realised_speedup is None else round(realised_speedup, 4),
        }
