"""Goodness-of-fit helpers shared by the distribution tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping

from scipy import stats


def chi_square_pvalue(samples: list[Hashable], expected: Mapping[Hashable, float]) -> float:
    """Pearson chi-square of `samples` against the probabilities `expected` (summing to 1).

    Cells with an expected count below 5 are pooled into one, as the test requires. A sample in a
    cell of probability 0 makes the p-value 0: the sampler produced an impossible outcome.
    """
    n = len(samples)
    counts = Counter(samples)
    if any(expected.get(key, 0.0) == 0.0 for key in counts):
        return 0.0
    observed, wanted = [], []
    pooled_obs, pooled_exp = 0.0, 0.0
    for key, prob in expected.items():
        if prob * n >= 5:
            observed.append(counts.get(key, 0))
            wanted.append(prob * n)
        else:
            pooled_obs += counts.get(key, 0)
            pooled_exp += prob * n
    if pooled_exp > 0:
        observed.append(pooled_obs)
        wanted.append(pooled_exp)
    total = sum(wanted)
    wanted = [w * sum(observed) / total for w in wanted]  # remove float drift from the sum
    return float(stats.chisquare(observed, wanted).pvalue)


def total_variation(samples: list[Hashable], expected: Mapping[Hashable, float]) -> float:
    n = len(samples)
    counts = Counter(samples)
    keys = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(k, 0) / n - expected.get(k, 0.0)) for k in keys)
