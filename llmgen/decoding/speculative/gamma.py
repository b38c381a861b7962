"""How many tokens the draft proposes per round: a fixed γ, or `auto`, which may choose γ = 0 (a plain step).

`auto` estimates two acceptance probabilities from the rounds seen so far, with a decay so that they
follow the text: α₁, that the first draft token of a round is accepted, and α₊, that a later one is
accepted when the tokens before it in the round were. It picks the γ that maximises the expected
tokens per second:

    E(γ)       = 1 + α₁ · (1 - α₊^γ) / (1 - α₊)   expected tokens per round (E(0) = 1: a plain step)
    T(γ)       = γ · c + t(γ + 1)                 c: one draft step; t(k): one target forward over k tokens
    γ*         = argmax over 0..γ_max of E(γ) / T(γ)

With α₁ = α₊ = α, E is Leviathan et al.'s (1 - α^(γ+1)) / (1 - α), the model for a draft whose tokens
are accepted about independently (a draft model). A copying draft (prompt lookup) is different: a
round either starts on the wrong span and fails at once, or on the right one and keeps going, so α₊
is far above α₁, and one α would keep γ short in the middle of a long copy.

Both rates are counted as accepted / tested, where a round tests its accepted tokens plus the first
rejected one (tokens after a rejection are never tested). Older observations weigh less: a factor
`decay` (0.97) per round since for α₁, and `LATER_DECAY` (0.99) per later token tested since for α₊, so
that the estimates cover about the last 33 rounds and 100 later tokens (α₊ is near 1 for a copying
draft, where a shorter memory holds too few rejections to tell 0.95 from 0.99).

The costs. t(k) is the engine's verify-cost curve v(k) (`loading/verify_cost.py`: measured once per
engine, model and threads, and cached) in units of a one-token forward, and the seconds the rounds
take, measured as the run goes (verify, processors and pick included): a forward size measured in this
run is its own measurement (the minimum of its last few: noise only adds time); another follows the
curve's shape anchored at the nearest measured size (before any, at the curve's own step seconds). The
draft step c: measured per proposed token, else the caller's prior.

γ = 0. Speculation must not cost more than a few percent where the draft misses, so a γ ≥ 1 is chosen
only if it beats a plain step by `margin` (5%). Otherwise the round is plain; α₁ is then no longer
learned, so the draft is *probed* (one round at the best γ ≥ 1):
- every `PROBE_GAP` rounds while it is uncertain (α₁ two standard errors up would make speculating win):
  such a probe costs about nothing, and without it an unlucky estimate would keep a good draft idle;
- otherwise at least `probe_every` rounds from the last proposal, and only when the probe's expected
  loss is at most `probe_share` (2%) of the plain time since. The loss counts what the draft must read
  to catch up (a model draft's cache lags by the plain rounds: `draft_forward_cost`, its own curve);
- never when speculating could not win even with every draft token accepted (a draft as slow as the
  target: `--draft self` on llama.cpp).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

# The curve assumed when the caller gives none (a table target in the tests, a library caller): nearly
# linear, as llama.cpp's quantized forwards on one CPU thread (SmolLM2 Q4_1, Xeon, 2026-12-07), so that
# the in-run measurements, not this guess, must show that a longer forward is cheap.
DEFAULT_FORWARD_COST = {1: 1.0, 2: 1.35, 3: 1.8, 4: 2.2, 6: 2.9, 8: 3.7, 16: 6.5}
SAMPLES = 8  # timings kept per forward size
SHRINK = 2.0  # pseudo-tokens that pull α₊ towards α₁
PROBE_GAP = 2  # rounds between probes while speculating may win
LATER_DECAY = 0.99  # per later token tested, for α₊


@dataclass(frozen=True)
class Expectation:
    """What the policy expected of a round before it ran: tokens, seconds, and a plain step's seconds."""

    tokens: float
    seconds: float
    plain_seconds: float

    @property
    def speedup(self) -> float:
        """Expected tokens per second over a plain step's."""
        return self.tokens * self.plain_seconds / self.seconds if self.seconds > 0 else 1.0


class GammaPolicy(Protocol):
    @property
    def gamma(self) -> int: ...

    def expect(self, proposed: int) -> Expectation | None: ...

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None: ...


class FixedGamma:
    def __init__(self, gamma: int) -> None:
        self._gamma = gamma

    @property
    def gamma(self) -> int:
        return self._gamma

    def expect(self, proposed: int) -> Expectation | None:
        return None  # no cost model: `auto` only

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None:
        pass


def expected_tokens(alpha: float, gamma: float) -> float:
    """(1 - α^(γ+1)) / (1 - α): expected tokens per round for an i.i.d. acceptance probability α."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def interpolate(curve: dict[int, float], k: int) -> float:
    """v(k) from a curve measured at some sizes: linear between them, flat below the smallest, and
    beyond the largest along the line through the last two (a verify keeps growing with k)."""
    if k in curve:
        return curve[k]
    keys = sorted(curve)
    if k <= keys[0]:
        return curve[keys[0]]
    if k >= keys[-1]:
        if len(keys) == 1:
            return curve[keys[-1]]
        a, b = keys[-2], keys[-1]
        return curve[b] + max(0.0, (curve[b] - curve[a]) / (b - a)) * (k - b)
    lo = max(key for key in keys if key < k)
    hi = min(key for key in keys if key > k)
    return curve[lo] + (curve[hi] - curve[lo]) * (k - lo) / (hi - lo)


class AdaptiveGamma:
    """γ = argmax E(α, γ) / (γ·c + t(γ+1)) over 0..max_gamma, with α, c and t(k) updated after every round."""

    def __init__(self, start: int = 4, max_gamma: int = 16, draft_cost: float = 0.5,
                 forward_cost: dict[int, float] | None = None, decay: float = 0.97,
                 prior_alpha: float = 0.7, probe_every: int = 8, margin: float = 0.05,
                 probe_share: float = 0.02, draft_forward_cost: dict[int, float] | None = None,
                 step_seconds: float | None = None) -> None:
        self.max_gamma = max_gamma
        self.decay = decay
        self.margin = margin  # how much γ ≥ 1 must beat a plain step by
        self.probe_every = probe_every  # rounds at least between probes while γ = 0
        self.probe_share = probe_share  # a probe's expected loss over the plain time since the last proposal
        self.draft_cost = draft_cost  # c, relative to a one-token target forward, until measured
        self.prior = dict(forward_cost or DEFAULT_FORWARD_COST)  # the target's v(k)
        self.step_seconds = step_seconds  # a one-token target forward, as measured with the curve (None: unknown)
        self.draft_prior = None if draft_forward_cost is None else dict(draft_forward_cost)  # None: no cache to catch up
        # Decayed [accepted, tested] at a round's first draft position and at its later ones, each
        # starting from 2 pseudo-tokens at the prior α.
        self.first = [prior_alpha * 2.0, 2.0]
        self.later = [prior_alpha * 2.0, 2.0]
        # Measured seconds: target forward over k tokens, and one draft step (the last few of each).
        self.samples: dict[int, deque[float]] = {}
        self.draft_samples: deque[float] = deque(maxlen=SAMPLES)
        self.since = 0  # rounds since the last one that proposed
        self._seconds: dict[int, float] = {}  # `seconds`, kept up to date by `update`
        self._times: list[float] | None = None  # `round_seconds` of every γ, cleared by `update`
        self._gamma = min(start, self.best())

    @property
    def alpha(self) -> float:
        """The acceptance rate over all tested draft tokens (the paper's α)."""
        return (self.first[0] + self.later[0]) / (self.first[1] + self.later[1])

    @property
    def rates(self) -> tuple[float, float]:
        """(α₁, α₊): acceptance of a round's first draft token, and of a later one after accepted ones.

        NOTE: α₊ is pulled towards α₁ by `SHRINK` pseudo-tokens. While few later tokens have been tested
        (short rounds, a draft that is rarely right), it is noisy, and then one α is the better model.
        """
        first = self.first[0] / self.first[1]
        return first, (self.later[0] + SHRINK * first) / (self.later[1] + SHRINK)

    @property
    def gamma(self) -> int:
        return self._gamma

    @property
    def seconds(self) -> dict[int, float]:
        """Target seconds per forward over k tokens, for each k measured in this run.

        NOTE: the minimum of the last few measurements: timing noise only ever adds time (another
        process, a page fault), and one stall must not rule a forward size out for good.
        """
        return self._seconds

    @property
    def in_seconds(self) -> bool:
        """Whether the target's costs are in seconds yet (measured here, or the curve's step seconds)."""
        return bool(self._seconds) or self.step_seconds is not None

    def target_seconds(self, k: int) -> float:
        """Seconds of a target forward over k tokens: measured, or the curve's shape anchored at the
        nearest measured size, else at the curve's step seconds (else in units of a one-token forward)."""
        seconds = self._seconds
        if k in seconds:
            return seconds[k]
        if not seconds:
            return interpolate(self.prior, k) * (self.step_seconds or 1.0)
        near = min(seconds, key=lambda j: (abs(j - k), j))
        return seconds[near] * interpolate(self.prior, k) / interpolate(self.prior, near)

    def draft_seconds(self) -> float:
        """Seconds of one draft step: measured, or the prior c times a one-token target forward."""
        if self.draft_samples and self.in_seconds:
            return min(self.draft_samples)
        return self.draft_cost * self.target_seconds(1)

    def _catch_up(self, behind: int) -> float:
        """Draft forwards, in draft steps, of a round's first draft step when the draft is `behind` tokens behind."""
        return 1.0 if self.draft_prior is None else interpolate(self.draft_prior, max(1, behind))

    def round_seconds(self, gamma: int, behind: int = 1) -> float:
        """Expected seconds of a round proposing γ tokens (a plain step for γ = 0)."""
        if gamma == 0:
            return self.target_seconds(1)
        return (gamma - 1 + self._catch_up(behind)) * self.draft_seconds() + self.target_seconds(gamma + 1)

    def round_tokens(self, gamma: int, first: float | None = None, later: float | None = None) -> float:
        """E(γ): expected tokens of a round proposing γ tokens, for the rates α₁ = first, α₊ = later."""
        if first is None or later is None:
            first, later = self.rates
        return 1.0 + first * expected_tokens(later, gamma - 1) if gamma else 1.0

    def scores(self, first: float, later: float) -> dict[int, float]:
        """Expected tokens per second of each γ in steady state (the draft caught up), for α₁ and α₊."""
        return {g: self.round_tokens(g, first, later) / seconds for g, seconds in enumerate(self._round_seconds())}

    def _round_seconds(self) -> list[float]:
        """round_seconds(γ) for γ = 0..max_gamma, computed once per update."""
        if self._times is None:
            self._times = [self.round_seconds(g) for g in range(self.max_gamma + 1)]
        return self._times

    def hopeless(self) -> bool:
        """Whether no γ ≥ 1 would beat a plain step by the margin even if every draft token were accepted."""
        perfect = self.scores(1.0, 1.0)
        return all(perfect[g] < perfect[0] * (1 + self.margin) for g in range(1, self.max_gamma + 1))

    def best(self) -> int:
        """The γ for the next round: the best γ ≥ 1 if it beats a plain step by the margin (a never-measured
        neighbour is tried first), else 0, or the best γ ≥ 1 as a probe when one is due."""
        scores = self.scores(*self.rates)
        best = max(range(1, self.max_gamma + 1), key=lambda g: (scores[g], -g))
        if scores[best] < scores[0] * (1 + self.margin):
            return best if self._probe_due(best) else 0
        for neighbour in (best - 1, best + 1):
            if 1 <= neighbour <= self.max_gamma and neighbour + 1 not in self.samples:
                return neighbour
        return best

    def _probe_due(self, gamma: int) -> bool:
        """Whether a probe at γ is due: every `PROBE_GAP` rounds while α₁ is uncertain enough that speculating
        may win (`_may_win`); otherwise at least `probe_every` rounds from the last proposal, and only if its
        expected loss (catching up included) is within `probe_share` of the plain time since."""
        if self.hopeless():
            return False
        if self.since >= PROBE_GAP and self._may_win():
            return True
        plain = self.target_seconds(1)
        loss = self.round_seconds(gamma, self.since + 1) - self.round_tokens(gamma) * plain
        return self.since >= self.probe_every and loss <= self.probe_share * self.since * plain

    def _may_win(self) -> bool:
        """Whether some γ ≥ 1 would beat a plain step by the margin if α₁ were two standard errors higher."""
        first, later = self.rates
        optimistic = self.scores(min(1.0, first + 2 * math.sqrt(first * (1 - first) / self.first[1])), later)
        return max(optimistic[g] for g in range(1, self.max_gamma + 1)) >= optimistic[0] * (1 + self.margin)

    def expect(self, proposed: int) -> Expectation | None:
        """What a round proposing `proposed` tokens is expected to yield and cost, given what is known now
        (None while the costs are not in seconds yet)."""
        if not self.in_seconds:
            return None
        return Expectation(self.round_tokens(proposed), self.round_seconds(proposed, self.since + 1),
                           self.target_seconds(1))

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None:
        samples = self.samples.setdefault(proposed + 1, deque(maxlen=SAMPLES))
        samples.append(target_seconds)
        self._seconds[proposed + 1] = min(samples)
        if proposed > 0:
            # NOTE: the first draft forward of a round read the tokens of the plain rounds before it too.
            self.draft_samples.append(draft_seconds / (proposed - 1 + self._catch_up(self.since + 1)))
            tested = accepted + (1 if accepted < proposed else 0)
            # NOTE: α₁ decays per round and α₊ per later token tested, so that a long round neither drowns
            # the next ones nor washes out what the last rounds said about their first tokens.
            keep = LATER_DECAY ** (tested - 1)
            self.first = [self.decay * self.first[0] + (accepted > 0), self.decay * self.first[1] + 1]
            self.later = [keep * self.later[0] + max(0, accepted - 1), keep * self.later[1] + tested - 1]
            self.since = 0
        else:
            self.since += 1
        self._times = None
        self._gamma = self.best()
