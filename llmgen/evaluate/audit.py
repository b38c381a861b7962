"""Does a sampler draw from the distribution it claims? A chi-square test of its samples, and the
hidden setting that best explains a gap.

Given N samples of k tokens each and the exact distribution P (`distribution.py`) that the claimed
settings define:

1. Position 1: Pearson's chi-square of the first tokens against P(. | prompt). Cells whose expected
   count N p is below 5 are pooled into one (as tests/stats_helpers.py does); a sample in a cell of
   probability 0 makes the p-value 0 (the sampler produced an impossible outcome).
2. Positions i = 2..k (k > 1): the samples are grouped by their sampled prefix x_1..x_{i-1}; each group
   large enough to test (see `needed_samples`) is tested against P(. | prompt, prefix), and the
   statistics and degrees of freedom of a position's groups are summed (disjoint groups: the sum is
   chi-square with the summed degrees of freedom). Groups too small are left out and counted.
3. The audit's p-value is the smallest position p-value times the number of positions tested
   (Bonferroni), capped at 1. It rejects when p < alpha.

The explainer: for each common hidden default (top-k 40, top-p 0.95, min-p 0.05, a repetition penalty
of 1.1, another temperature, greedy, and llama-cpp-python's server defaults together), the
log-likelihood of the first-position samples under the claim plus that default is compared with
the claim's; the best one that beats the claim is named, with the p-value of the samples under it.

Cells are keys: token ids, or texts when a server's answers are mapped back by text (`cells_by_text`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from llmgen.decoding.config import DecodingConfig

MIN_EXPECTED = 5.0  # the chi-square approximation needs an expected count of 5 in every (pooled) cell
POOLED = "<pooled>"

Expected = Mapping[Hashable, float]


@dataclass(frozen=True)
class Residual:
    key: Hashable
    observed: int
    expected: float

    @property
    def z(self) -> float:
        """(O - E) / sqrt(E): positive when the cell was over-drawn."""
        return (self.observed - self.expected) / math.sqrt(self.expected) if self.expected > 0 else math.inf


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    n: int
    cells: list[Residual] = field(default_factory=list)  # unpooled cells, and those of probability 0 that were drawn
    impossible: int = 0  # samples in cells of probability 0

    def over(self, count: int = 3) -> list[Residual]:
        return sorted((c for c in self.cells if c.z > 0), key=lambda c: -c.z)[:count]

    def under(self, count: int = 3) -> list[Residual]:
        return sorted((c for c in self.cells if c.z < 0), key=lambda c: c.z)[:count]


def chi_square(observed: Mapping[Hashable, int], expected: Expected) -> ChiSquare:
    """Pearson's chi-square of counts `observed` against the probabilities `expected` (summing to 1)."""
    from scipy import stats  # NOTE: imported here: scipy is needed only when an audit runs

    n = sum(observed.values())
    impossible = [Residual(key, count, 0.0) for key, count in observed.items()
                  if count and expected.get(key, 0.0) <= 0.0]
    cells, pooled_obs, pooled_exp = [], 0, 0.0
    for key, prob in expected.items():
        if prob <= 0:
            continue
        if prob * n >= MIN_EXPECTED:
            cells.append(Residual(key, observed.get(key, 0), prob * n))
        else:
            pooled_obs += observed.get(key, 0)
            pooled_exp += prob * n
    if impossible:
        return ChiSquare(math.inf, max(len(cells), 1), 0.0, n, cells + impossible, sum(c.observed for c in impossible))
    tested = cells + ([Residual(POOLED, pooled_obs, pooled_exp)] if pooled_exp > 0 else [])
    if len(tested) < 2:  # one cell (a one-hot distribution): nothing can deviate but an impossible draw
        return ChiSquare(0.0, 0, 1.0, n, cells)
    total = sum(c.expected for c in tested)
    wanted = [c.expected * n / total for c in tested]  # NOTE: absorb float drift in the sum of probabilities
    result = stats.chisquare([c.observed for c in tested], wanted)
    return ChiSquare(float(result.statistic), len(tested) - 1, float(result.pvalue), n, cells)


def needed_samples(expected: Expected) -> int:
    """The fewest samples that give the test two cells with an expected count of 5: the most likely
    cell and the rest. 1 for a one-hot distribution (any other draw is impossible, and is caught)."""
    top = max(expected.values(), default=1.0)
    rest = 1.0 - top
    if rest <= 1e-12:
        return 1
    return math.ceil(MIN_EXPECTED / min(top, rest) - 1e-9)  # NOTE: 1 - 0.9 is 0.0999..., and 50 samples suffice


def grouped(probs: Tensor, key_of: Sequence[Hashable] | None = None) -> dict[Hashable, float]:
    """The nonzero entries of `probs` [vocab] as {key: probability}, adding up the tokens that share a key."""
    out: dict[Hashable, float] = defaultdict(float)
    nonzero = probs.nonzero().flatten().tolist()
    values = probs[nonzero].tolist()
    for token, p in zip(nonzero, values):
        out[token if key_of is None else key_of[token]] += p
    return dict(out)


# ---- the test over k positions -------------------------------------------------------------------

@dataclass(frozen=True)
class PositionTest:
    position: int  # 1-based
    test: ChiSquare
    groups: int  # prefixes tested
    skipped: int  # samples in prefixes too rare to test


@dataclass(frozen=True)
class Verdict:
    p_value: float
    alpha: float
    positions: list[PositionTest]
    n: int

    @property
    def rejected(self) -> bool:
        return self.p_value < self.alpha


ExpectedOf = Callable[[tuple], Expected]  # sampled prefix (keys) -> the claimed distribution of the next key


def audit_samples(samples: Sequence[tuple], expected_of: ExpectedOf, alpha: float) -> Verdict:
    """The audit's test (steps 1-3 of the module docstring). `samples` are tuples of keys, one per position."""
    from scipy import stats

    k = max((len(s) for s in samples), default=0)
    positions = []
    for i in range(k):
        by_prefix: dict[tuple, Counter] = defaultdict(Counter)
        for sample in samples:
            if len(sample) > i:
                by_prefix[sample[:i]][sample[i]] += 1
        statistic, dof, groups, skipped, cells, impossible, n = 0.0, 0, 0, 0, [], 0, 0
        for prefix, counts in by_prefix.items():
            expected = expected_of(prefix)
            size = sum(counts.values())
            if size < needed_samples(expected) and not any(expected.get(key, 0.0) <= 0 for key in counts):
                skipped += size
                continue
            result = chi_square(counts, expected)
            groups += 1
            n += size
            impossible += result.impossible
            statistic += result.statistic
            dof += result.dof
            if i == 0:
                cells = result.cells
        if not groups:
            continue
        if impossible:
            p = 0.0
        else:
            p = float(stats.chi2.sf(statistic, dof)) if dof > 0 else 1.0
        positions.append(PositionTest(i + 1, ChiSquare(statistic, dof, p, n, cells, impossible), groups, skipped))
    p_value = min(1.0, min((t.test.p_value for t in positions), default=1.0) * max(len(positions), 1))
    return Verdict(p_value, alpha, positions, len(samples))


# ---- the explainer -------------------------------------------------------------------------------

LLAMA_CPP_SERVER = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1, "penalty_window": 64}


def hidden_defaults(claim: DecodingConfig) -> list[tuple[str, DecodingConfig]]:
    """The claim plus each common hidden default that would change it, named."""
    out: list[tuple[str, DecodingConfig]] = []
    if claim.top_k == 0 or claim.top_k > 40:
        out.append(("top-k 40", claim.replace(top_k=40)))
    if claim.top_p > 0.95:
        out.append(("top-p 0.95", claim.replace(top_p=0.95)))
    if claim.min_p < 0.05:
        out.append(("min-p 0.05", claim.replace(min_p=0.05)))
    if claim.repetition_penalty == 1.0:
        out.append(("repetition penalty 1.1 (last 64 tokens, prompt included)",
                    claim.replace(repetition_penalty=1.1, penalty_scope="all", penalty_window=64)))
    for temperature in (0.6, 0.7, 0.8, 1.2, 1.5):
        if not claim.greedy and abs(claim.temperature - temperature) > 1e-9:
            out.append((f"temperature {temperature}", claim.replace(temperature=temperature)))
    if not claim.greedy:
        out.append(("greedy (temperature 0)", claim.replace(temperature=0.0)))
    combined = claim.replace(**{name: value for name, value in LLAMA_CPP_SERVER.items()})
    if combined != claim:
        out.append(("llama-cpp-python server defaults (top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.1)",
                    combined))
    return out


@dataclass(frozen=True)
class Explanation:
    name: str
    config: DecodingConfig
    gain: float  # log-likelihood of the first-position samples under it, minus under the claim (nats)
    p_value: float  # of the first-position samples under it


def log_likelihood(counts: Mapping[Hashable, int], expected: Expected) -> float:
    total = 0.0
    for key, count in counts.items():
        p = expected.get(key, 0.0)
        if p <= 0:
            return -math.inf
        total += count * math.log(p)
    return total


def explain(first: Mapping[Hashable, int], claimed: Expected,
            candidates: Sequence[tuple[str, DecodingConfig, Expected]]) -> Explanation | None:
    """The candidate under which the first-position counts are most likely, if more likely than the claim."""
    base = log_likelihood(first, claimed)
    best: tuple[float, str, DecodingConfig, Expected] | None = None
    for name, config, expected in candidates:
        score = log_likelihood(first, expected)
        if score > base and (best is None or score > best[0]):
            best = (score, name, config, expected)
    if best is None:
        return None
    score, name, config, expected = best
    gain = math.inf if base == -math.inf else score - base
    return Explanation(name, config, gain, chi_square(first, expected).p_value)
