"""γ policies: fixed, and `auto`, which follows the acceptance and the measured costs."""

from __future__ import annotations

import pytest

from llmgen.decoding.speculative.gamma import CPU_FORWARD_COST, AdaptiveGamma, FixedGamma, expected_tokens


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_fixed_gamma_never_moves() -> None:
    policy = FixedGamma(3)
    policy.update(3, 0, 0.1, 0.1)
    assert policy.gamma == 3


def flat_cost(policy: AdaptiveGamma, gamma: int) -> float:
    """Target seconds for a forward over gamma+1 tokens on a machine where that barely grows."""
    return 0.010 * (1 + 0.05 * gamma)


def test_auto_grows_after_full_acceptance_and_shrinks_after_early_rejection() -> None:
    policy = AdaptiveGamma(start=4, max_gamma=12, draft_cost=0.1)
    history = []
    for _ in range(12):  # the draft is always right
        g = policy.gamma
        policy.update(g, g, draft_seconds=0.001 * g, target_seconds=flat_cost(policy, g))
        history.append(policy.gamma)
    assert history[-1] > 4 and history == sorted(history)
    high = policy.gamma
    for _ in range(40):  # now it is wrong from the first token
        g = policy.gamma
        policy.update(g, 0, draft_seconds=0.001 * g, target_seconds=flat_cost(policy, g))
    assert policy.gamma < high
    assert policy.gamma <= 2


def test_auto_prefers_a_cheap_forward_size() -> None:
    # With the CPU prior, a forward over 3 tokens costs more than one over 4 or 5: γ = 2 is avoided.
    policy = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.05, prior_alpha=0.6)
    scores = {g: expected_tokens(policy.alpha, g) / (g * 0.05 + CPU_FORWARD_COST.get(g + 1, 1.7))
              for g in (2, 3, 4)}
    assert scores[2] < scores[3]
    assert policy.best() != 2


def test_auto_learns_the_measured_costs() -> None:
    # Measured: forwards over more than 3 tokens are very expensive on this (imaginary) machine.
    policy = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.05, prior_alpha=0.9)
    for _ in range(20):
        g = policy.gamma
        seconds = 0.01 if g + 1 <= 3 else 0.01 * (g + 1)
        policy.update(g, g, draft_seconds=0.0005 * g, target_seconds=seconds)
    assert policy.gamma == 2


def test_one_stall_does_not_rule_a_size_out() -> None:
    policy = AdaptiveGamma(start=4, max_gamma=8, draft_cost=0.05, prior_alpha=0.9)
    policy.update(4, 4, draft_seconds=0.004, target_seconds=5.0)  # a stall: another process took the CPU
    for _ in range(3):
        policy.update(4, 4, draft_seconds=0.004, target_seconds=0.012)
    assert policy.seconds[5] == 0.012


def simulate(policy, alpha: float, forward: dict[int, float], draft_step: float, rounds: int = 600,
             later: float | None = None) -> float:
    """Tokens per simulated second (no real timing), with the given costs and acceptance: the first draft
    token of a round is accepted with probability α, each later one with probability `later` (α when
    None: i.i.d. acceptance) once the ones before it were."""
    import random

    from llmgen.decoding.speculative.gamma import _interpolate

    rng = random.Random(0)
    tokens = seconds = 0.0
    for _ in range(rounds):
        g = policy.gamma
        accepted = 0
        while accepted < g and rng.random() < (alpha if accepted == 0 or later is None else later):
            accepted += 1
        target = _interpolate(forward, g + 1)
        policy.update(g, accepted, draft_seconds=g * draft_step, target_seconds=target)
        tokens += accepted + 1
        seconds += g * draft_step + target
    return tokens / seconds


FLAT = {1: 1.0, 2: 1.02, 4: 1.05, 8: 1.1, 16: 1.2, 32: 1.5}


@pytest.mark.parametrize("forward", [CPU_FORWARD_COST, FLAT], ids=["cpu", "flat"])
@pytest.mark.parametrize("alpha,draft_step", [(0.1, 0.01), (0.5, 0.05), (0.8, 0.3), (0.95, 0.65), (0.99, 0.02)])
def test_auto_is_close_to_the_best_fixed_gamma(forward, alpha: float, draft_step: float) -> None:
    # γ = 0 is plain decoding: on a CPU, a draft that is right 10% of the time is not worth a longer forward.
    best_fixed = max(simulate(FixedGamma(g), alpha, forward, draft_step) for g in range(0, 17))
    auto = simulate(AdaptiveGamma(start=4, max_gamma=16, draft_cost=0.5), alpha, forward, draft_step)
    assert auto >= 0.95 * best_fixed, (auto, best_fixed)


@pytest.mark.parametrize("forward", [CPU_FORWARD_COST, FLAT], ids=["cpu", "flat"])
@pytest.mark.parametrize("first,later", [(0.3, 0.95), (0.6, 0.97), (0.8, 0.99)])
def test_auto_follows_a_copying_draft(forward, first: float, later: float) -> None:
    # Prompt lookup: a round fails at its first token or copies on for long, so one α (the i.i.d. model)
    # would keep γ far too short. Costs of a nearly free draft; γ up to 24, as `speculate` uses for it.
    best_fixed = max(simulate(FixedGamma(g), first, forward, 0.001, later=later) for g in range(0, 25))
    auto = simulate(AdaptiveGamma(start=4, max_gamma=24, draft_cost=0.02), first, forward, 0.001, later=later)
    assert auto >= 0.95 * best_fixed, (auto, best_fixed)
