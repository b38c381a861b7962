"""How many tokens the draft proposes per round: a fixed γ, or `auto`.

`auto` estimates two acceptance probabilities from the rounds seen so far, with a decay so that they
follow the text: α₁, that the first draft token of a round is accepted, and α₊, that a later one is
accepted when the tokens before it in the round were. It picks the γ that maximises the expected
tokens per unit of time:

    E(γ)       = 1 + α₁ · (1 - α₊^γ) / (1 - α₊)   expected tokens per round
    cost(γ)    = γ · c + v(γ + 1)                 c: one draft step; v(k): one target forward over k tokens
    γ*         = argmax over 0..γ_max of E(γ) / cost(γ)

With α₁ = α₊ = α, E is Leviathan et al.'s (1 - α^(γ+1)) / (1 - α), the model for a draft whose tokens
are accepted about independently (a draft model). A copying draft (prompt lookup) is different: a
round either starts on the wrong span and fails at once, or on the right one and keeps going, so α₊
is far above α₁, and one α would keep γ short in the middle of a long copy.

Both rates are counted as accepted / tested, where a round tests its accepted tokens plus the first
rejected one (tokens after a rejection are never tested). Older observations weigh less: a factor
`decay` per round since for α₁, per later token tested since for α₊, so that the estimates cover about
the last 1 / (1 - decay) rounds and later tokens. So γ grows
after full acceptance and shrinks after an early rejection. γ = 0 (plain decoding) wins when the
draft is rarely right and a longer forward costs more than it brings (an n-gram draft on open-ended
text); a proposal is still made every `probe_every` rounds, to notice when that changes.

v(k) is not monotonic on CPUs (matrix kernels handle 2-3 rows badly) and depends on the machine, the
threads and the load, so the costs are *measured* as the run goes, in seconds: each round reports the
seconds its draft and its target took. A forward size not measured yet is estimated from the nearest
measured size and the shape of the prior v (our CPU's measurement, `CPU_FORWARD_COST`); the draft
step, until measured, from the caller's prior c. A neighbour of the chosen γ that was never measured
is tried once, so that a prior of the wrong shape cannot hide a good size.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

# One fp32 target forward over k tokens, relative to k = 1, measured on the development CPU
# (SmolLM2-135M). Values between the listed k are interpolated linearly; beyond 16, extrapolated flat.
CPU_FORWARD_COST = {1: 1.0, 2: 1.65, 3: 2.2, 4: 1.8, 5: 1.7, 8: 1.65, 16: 2.1}
SAMPLES = 8  # timings kept per forward size
SHRINK = 2.0  # pseudo-tokens that pull α₊ towards α₁


class GammaPolicy(Protocol):
    @property
    def gamma(self) -> int: ...

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None: ...


class FixedGamma:
    def __init__(self, gamma: int) -> None:
        self._gamma = gamma

    @property
    def gamma(self) -> int:
        return self._gamma

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None:
        pass


def expected_tokens(alpha: float, gamma: float) -> float:
    """(1 - α^(γ+1)) / (1 - α): expected tokens per round for an i.i.d. acceptance probability α."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def _interpolate(table: dict[int, float], k: int) -> float:
    if k in table:
        return table[k]
    keys = sorted(table)
    if k <= keys[0]:
        return table[keys[0]]
    if k >= keys[-1]:
        return table[keys[-1]]
    lo = max(key for key in keys if key < k)
    hi = min(key for key in keys if key > k)
    return table[lo] + (table[hi] - table[lo]) * (k - lo) / (hi - lo)


class AdaptiveGamma:
    """γ = argmax E(α, γ) / (γ·c + v(γ+1)), with α, c and v(k) updated after every round."""

    def __init__(self, start: int = 4, max_gamma: int = 16, draft_cost: float = 0.5,
                 forward_cost: dict[int, float] | None = None, decay: float = 0.97,
                 prior_alpha: float = 0.7, probe_every: int = 16) -> None:
        self.max_gamma = max_gamma
        self.probe_every = probe_every  # while γ = 0 is best, still propose once every this many rounds
        self.decay = decay
        self.draft_cost = draft_cost  # c, relative to a one-token target forward
        self.prior = dict(forward_cost or CPU_FORWARD_COST)
        # Decayed [accepted, tested] at a round's first draft position and at its later ones, each
        # starting from 2 pseudo-tokens at the prior α.
        self.first = [prior_alpha * 2.0, 2.0]
        self.later = [prior_alpha * 2.0, 2.0]
        # Measured seconds: target forward over k tokens, and one draft token (the last few of each).
        self.samples: dict[int, deque[float]] = {}
        self.draft_samples: deque[float] = deque(maxlen=SAMPLES)
        self._gamma = start
        self._plain_rounds = 0

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
        """Target seconds per forward over k tokens, for each k measured.

        NOTE: the minimum of the last few measurements: timing noise only ever adds time (another
        process, a page fault), and one stall must not rule a forward size out for good.
        """
        return {k: min(samples) for k, samples in self.samples.items()}

    def target_seconds(self, k: int) -> float:
        """Seconds of a target forward over k tokens: measured, or the prior's shape anchored at the
        nearest measured size (in units of a one-token forward while nothing is measured)."""
        seconds = self.seconds
        if k in seconds:
            return seconds[k]
        if not seconds:
            return _interpolate(self.prior, k)
        near = min(seconds, key=lambda j: (abs(j - k), j))
        return seconds[near] * _interpolate(self.prior, k) / _interpolate(self.prior, near)

    def draft_seconds(self) -> float:
        """Seconds of one draft step: measured, or the prior c times a one-token target forward."""
        if self.draft_samples:
            return min(self.draft_samples)
        return self.draft_cost * self.target_seconds(1)

    def _scores(self, first: float, later: float) -> dict[int, float]:
        """Expected tokens per second of each γ, for the rates α₁ = first and α₊ = later."""
        step = self.draft_seconds()
        return {g: (1.0 + first * expected_tokens(later, g - 1) if g else 1.0) / (g * step + self.target_seconds(g + 1))
                for g in range(0, self.max_gamma + 1)}

    def best(self) -> int:
        """The γ with the most expected tokens per second (a never-measured neighbour is tried first)."""
        scores = self._scores(*self.rates)
        best = max(range(1, self.max_gamma + 1), key=lambda g: (scores[g], -g))
        # NOTE: γ = 0 stops the learning of the rates, so it is chosen only if it wins even for an optimistic
        # α₁ (two standard errors up); and even then a proposal is made every `probe_every` rounds. (α₊ is
        # taken as it is: while the first token is rarely accepted, α₊ is barely tested and would stay
        # uncertain for ever.)
        first, later = self.rates
        optimistic = self._scores(min(1.0, first + 2 * math.sqrt(first * (1 - first) / self.first[1])), later)
        if optimistic[0] > max(optimistic[g] for g in range(1, self.max_gamma + 1)):
            self._plain_rounds += 1
            if self._plain_rounds % self.probe_every:
                return 0
        for neighbour in (best - 1, best + 1):
            if 1 <= neighbour <= self.max_gamma and neighbour + 1 not in self.samples:
                return neighbour
        return best

    def update(self, proposed: int, accepted: int, draft_seconds: float, target_seconds: float) -> None:
        self.samples.setdefault(proposed + 1, deque(maxlen=SAMPLES)).append(target_seconds)
        if proposed > 0:
            self.draft_samples.append(draft_seconds / proposed)
            tested = accepted + (1 if accepted < proposed else 0)
            # NOTE: α₁ decays per round and α₊ per later token tested, so that a long round neither drowns
            # the next ones nor washes out what the last rounds said about their first tokens.
            keep = self.decay ** (tested - 1)
            self.first = [self.decay * self.first[0] + (accepted > 0), self.decay * self.first[1] + 1]
            self.later = [keep * self.later[0] + max(0, accepted - 1), keep * self.later[1] + tested - 1]
        self._gamma = self.best()
