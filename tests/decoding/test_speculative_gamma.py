"""γ policies: fixed, and `auto`, which follows the acceptance and the engine's verify-cost curve.

Every test here is pure: costs are injected (a curve, and simulated seconds), never measured."""

from __future__ import annotations

import random

import pytest

from llmgen.decoding.speculative.gamma import (
    DEFAULT_FORWARD_COST,
    AdaptiveGamma,
    Expectation,
    FixedGamma,
    expected_tokens,
    interpolate,
)

# v(k) as measured by `loading/verify_cost.py` (Xeon, one thread, 2026-12-07): llama.cpp's quantized forward
# grows nearly linearly with k; the torch engine's float32 forward barely grows, and unevenly.
LLAMACPP_SMOLLM2 = {1: 1.0, 2: 1.36, 3: 1.75, 4: 2.1, 6: 2.93, 8: 3.63, 16: 6.38}
LLAMACPP_GEMMA = {1: 1.0, 2: 1.38, 3: 1.87, 4: 2.21, 6: 2.77, 8: 3.26, 16: 5.64}
TORCH_CPU = {1: 1.0, 2: 1.65, 3: 2.2, 4: 1.8, 5: 1.7, 8: 1.65, 16: 2.1, 24: 2.35}
FLAT = {1: 1.0, 2: 1.02, 4: 1.05, 8: 1.1, 16: 1.2, 32: 1.5}
# Issue 29's table (AMD EPYC, one thread): a llama.cpp build with llamafile's sgemm, costlier per extra token.
EPYC_SMOLLM2 = {1: 1.0, 2: 1.8, 4: 2.7, 8: 4.6, 16: 8.2}
EPYC_GEMMA = {1: 1.0, 2: 2.5, 4: 3.2, 8: 4.8, 16: 7.5}


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_interpolate_is_linear_between_sizes_and_keeps_growing_beyond_them() -> None:
    curve = {1: 1.0, 2: 1.5, 4: 2.5, 8: 4.5}
    assert interpolate(curve, 3) == pytest.approx(2.0)
    assert interpolate(curve, 12) == pytest.approx(4.5 + 0.5 * 4)  # the slope of 4..8
    assert interpolate({1: 1.0, 2: 2.0, 3: 1.5}, 10) == 1.5  # a falling end is extended flat, never down
    assert interpolate(curve, 0) == 1.0


def test_fixed_gamma_never_moves() -> None:
    policy = FixedGamma(3)
    policy.update(3, 0, 0.1, 0.1)
    assert policy.gamma == 3 and policy.expect(3) is None


def test_auto_grows_after_full_acceptance_and_shrinks_after_early_rejection() -> None:
    policy = AdaptiveGamma(start=4, max_gamma=12, draft_cost=0.1, forward_cost=LLAMACPP_SMOLLM2)
    seconds = {g: 0.010 * interpolate(LLAMACPP_SMOLLM2, g + 1) for g in range(13)}
    history = []
    for _ in range(12):  # the draft is always right
        g = policy.gamma
        policy.update(g, g, draft_seconds=0.0001 * g, target_seconds=seconds[g])
        history.append(policy.gamma)
    assert history[-1] >= 8 and history[-4:] == sorted(history[-4:])  # after a neighbour or two is tried
    for _ in range(40):  # now it is wrong from the first token
        g = policy.gamma
        policy.update(g, 0, draft_seconds=0.0001 * g, target_seconds=seconds[g])
        history.append(policy.gamma)
    # Plain steps, and while α₁ is still uncertain, a one-token probe every third round.
    assert max(history[-10:]) <= 1 and history[-10:].count(0) >= 6


def test_auto_prefers_a_cheap_forward_size() -> None:
    # On this curve a forward over 3 tokens costs more than one over 4 or 5: γ = 2 is avoided.
    policy = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.05, prior_alpha=0.6, forward_cost=TORCH_CPU)
    scores = {g: expected_tokens(policy.alpha, g) / (g * 0.05 + TORCH_CPU.get(g + 1, 1.7)) for g in (2, 3, 4)}
    assert scores[2] < scores[3]
    assert policy.best() != 2


def test_auto_learns_the_measured_costs() -> None:
    # Measured: forwards over more than 3 tokens are very expensive on this (imaginary) machine.
    policy = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.05, prior_alpha=0.9, forward_cost=FLAT)
    for _ in range(30):
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
             later: float | None = None, catch_up: dict[int, float] | None = None,
             gammas: list[int] | None = None) -> float:
    """Tokens per simulated second (no real timing), with the given costs and acceptance: the first draft
    token of a round is accepted with probability α, each later one with probability `later` (α when
    None: i.i.d. acceptance) once the ones before it were. `catch_up`: the draft's own curve, for a draft
    with a cache that reads the tokens of the plain rounds before a proposal in one forward. `gammas`
    collects the γ of each round."""
    rng = random.Random(0)
    tokens = seconds = 0.0
    behind = 1
    for _ in range(rounds):
        g = policy.gamma
        if gammas is not None:
            gammas.append(g)
        accepted = 0
        while accepted < g and rng.random() < (alpha if accepted == 0 or later is None else later):
            accepted += 1
        target = interpolate(forward, g + 1)
        draft = 0.0 if g == 0 else draft_step * (g - 1 + (interpolate(catch_up, behind) if catch_up else 1.0))
        behind = behind + 1 if g == 0 else 1
        policy.update(g, accepted, draft_seconds=draft, target_seconds=target)
        tokens += accepted + 1
        seconds += draft + target
    return tokens / seconds


@pytest.mark.parametrize("forward", [TORCH_CPU, FLAT, LLAMACPP_SMOLLM2], ids=["torch", "flat", "llamacpp"])
@pytest.mark.parametrize("alpha,draft_step", [(0.1, 0.01), (0.5, 0.05), (0.8, 0.3), (0.95, 0.65), (0.99, 0.02)])
def test_auto_is_close_to_the_best_fixed_gamma(forward, alpha: float, draft_step: float) -> None:
    # γ = 0 is plain decoding: on a CPU, a draft that is right 10% of the time is not worth a longer forward.
    best_fixed = max(simulate(FixedGamma(g), alpha, forward, draft_step) for g in range(0, 17))
    auto = simulate(AdaptiveGamma(start=4, max_gamma=16, draft_cost=0.5, forward_cost=forward), alpha, forward,
                    draft_step)
    assert auto >= 0.95 * best_fixed, (auto, best_fixed)


@pytest.mark.parametrize("forward", [TORCH_CPU, FLAT, LLAMACPP_SMOLLM2], ids=["torch", "flat", "llamacpp"])
@pytest.mark.parametrize("first,later", [(0.3, 0.95), (0.6, 0.97), (0.8, 0.99)])
def test_auto_follows_a_copying_draft(forward, first: float, later: float) -> None:
    # Prompt lookup: a round fails at its first token or copies on for long, so one α (the i.i.d. model)
    # would keep γ far too short. Costs of a nearly free draft; γ up to 24, as `speculate` uses for it.
    # NOTE: long runs: with rounds this long, the best of 25 fixed γ over 600 rounds is mostly its luck.
    best_fixed = max(simulate(FixedGamma(g), first, forward, 0.001, rounds=2000, later=later) for g in range(0, 25))
    auto = simulate(AdaptiveGamma(start=4, max_gamma=24, draft_cost=0.02, forward_cost=forward), first, forward,
                    0.001, rounds=2000, later=later)
    assert auto >= 0.95 * best_fixed, (auto, best_fixed)


@pytest.mark.parametrize("curve,alpha", [(EPYC_SMOLLM2, 0.4), (EPYC_GEMMA, 0.4), (LLAMACPP_SMOLLM2, 0.25),
                                         (LLAMACPP_GEMMA, 0.25)], ids=["epyc-smollm2", "epyc-gemma", "smollm2", "gemma"])
def test_on_llamacpp_a_draft_that_misses_gets_plain_steps(curve, alpha: float) -> None:
    # The n-gram draft on open prompts (issue 29: α 0.39-0.44 on the EPYC): a 2-token verify costs 1.8
    # steps for 1.4 expected tokens at best. On the Xeon's curve (1.36 steps) α = 0.4 is about even, and
    # 0.25 is not. Either way, at most 5% may be lost to finding out.
    gammas: list[int] = []
    policy = AdaptiveGamma(start=4, max_gamma=24, draft_cost=0.02, forward_cost=curve)
    auto = simulate(policy, alpha, curve, 0.001, rounds=400, later=0.6, gammas=gammas)
    assert gammas[-300:].count(0) >= 0.9 * 300
    assert auto >= 0.95 * simulate(FixedGamma(0), alpha, curve, 0.001, rounds=400)


@pytest.mark.parametrize("curve", [LLAMACPP_SMOLLM2, LLAMACPP_GEMMA, EPYC_SMOLLM2],
                         ids=["smollm2", "gemma", "epyc-smollm2"])
def test_on_llamacpp_a_draft_right_97_percent_of_the_time_gets_a_long_gamma(curve) -> None:
    gammas: list[int] = []
    policy = AdaptiveGamma(start=4, max_gamma=24, draft_cost=0.02, forward_cost=curve)
    auto = simulate(policy, 0.97, curve, 0.001, rounds=1000, gammas=gammas)
    assert min(gammas[-100:]) >= 8
    assert auto >= 0.95 * max(simulate(FixedGamma(g), 0.97, curve, 0.001, rounds=1000) for g in range(25))


def test_a_draft_as_slow_as_the_target_is_never_run_on_llamacpp() -> None:
    # `--draft self` on llama.cpp: c = 1. Even all accepted, γ draft steps + v(γ+1) > γ + 1 plain steps.
    policy = AdaptiveGamma(start=4, max_gamma=16, draft_cost=1.0, forward_cost=LLAMACPP_SMOLLM2,
                           draft_forward_cost=LLAMACPP_SMOLLM2, step_seconds=0.02)
    assert policy.hopeless()
    gammas: list[int] = []
    simulate(policy, 1.0, {k: 0.02 * v for k, v in LLAMACPP_SMOLLM2.items()}, 0.02, rounds=300, gammas=gammas)
    assert set(gammas) == {0}


def test_probes_are_priced_with_the_draft_catching_up() -> None:
    # A model draft at c = 0.3 that stops being right: on llama.cpp its cache must read every plain round's
    # token before a probe (0.4 steps a token), which the probe budget never covers, so it is not probed
    # again; with no cache to catch up (the same costs, the n-gram draft) it is probed now and then.
    def run(catch_up: dict[int, float] | None) -> list[int]:
        policy = AdaptiveGamma(start=4, max_gamma=16, draft_cost=0.3, forward_cost=LLAMACPP_SMOLLM2,
                               draft_forward_cost=catch_up, prior_alpha=0.9)
        gammas: list[int] = []
        simulate(policy, 0.05, LLAMACPP_SMOLLM2, 0.3, rounds=400, gammas=gammas)
        return gammas

    with_cache, without = run(LLAMACPP_SMOLLM2), run(None)
    assert not any(with_cache[100:])
    proposing = sum(1 for g in without[100:] if g)
    assert 0 < proposing <= 300 / 8  # probes, at least `probe_every` rounds apart


def test_expectation_is_in_seconds_once_they_are_known() -> None:
    policy = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.1, forward_cost=LLAMACPP_SMOLLM2)
    assert policy.expect(2) is None  # relative units only: nothing to compare with a measured round
    timed = AdaptiveGamma(start=2, max_gamma=8, draft_cost=0.1, forward_cost=LLAMACPP_SMOLLM2, step_seconds=0.02,
                          prior_alpha=0.5)
    expected = timed.expect(2)
    assert isinstance(expected, Expectation)
    first, later = timed.rates
    assert expected.tokens == pytest.approx(1 + first * (1 + later))
    assert expected.seconds == pytest.approx(2 * 0.1 * 0.02 + 1.75 * 0.02)
    assert expected.speedup == pytest.approx(expected.tokens * 0.02 / expected.seconds)
    plain = timed.expect(0)
    assert plain is not None and plain.speedup == pytest.approx(1.0)


def test_the_default_curve_is_no_cheaper_than_a_llamacpp_one() -> None:
    # Without an engine's curve, a long verify must not look cheap: in-run measurements have to show it.
    assert all(DEFAULT_FORWARD_COST[k] >= 0.95 * interpolate(LLAMACPP_SMOLLM2, k) for k in DEFAULT_FORWARD_COST)
