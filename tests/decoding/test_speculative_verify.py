"""The verifier on hand-made distributions: no model involved."""

from __future__ import annotations

import pytest
import torch

from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative.verify import verify, verify_greedy

V = 5


def peaked(*tokens: int, mass: float = 1.0) -> torch.Tensor:
    """Rows that put `mass` on the given token and spread the rest evenly. [len(tokens), V]"""
    rows = torch.full((len(tokens), V), (1.0 - mass) / (V - 1))
    for i, token in enumerate(tokens):
        rows[i, token] = mass
    return rows


def test_all_accepted_then_bonus_from_the_last_row() -> None:
    p = peaked(1, 2, 3, 4)  # the target agrees with every draft token, and wants 4 after them
    q = peaked(1, 2, 3)
    verdict = verify([1, 2, 3], q, p, make_generator(0))
    assert verdict.tokens == [1, 2, 3, 4]
    assert verdict.accepted == 3
    assert verdict.last_origin == "bonus"
    assert verdict.p_draft == [1.0, 1.0, 1.0] and verdict.q_draft == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("position", [0, 1, 2])
def test_rejection_at_each_position_resamples_from_the_target(position: int) -> None:
    draft = [1, 2, 3]
    wanted = [1, 2, 3, 0]
    wanted[position] = 4  # the target puts all its mass elsewhere at this position: p(x) = 0
    verdict = verify(draft, peaked(*draft), peaked(*wanted), make_generator(0))
    assert verdict.accepted == position
    assert verdict.tokens == [*draft[:position], 4]
    assert verdict.last_origin == "resampled"


def test_residual_is_the_normalised_positive_part_of_p_minus_q() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0], [0.2] * 5])
    q = torch.tensor([[0.1, 0.6, 0.3, 0.0, 0.0]])
    # Draft token 1: accepted with probability p/q = 0.5. Residual max(0, p - q) = [0.4, 0, 0, 0, 0].
    outcomes = {"accepted": 0, "resampled": []}
    generator = make_generator(1)
    for _ in range(4000):
        verdict = verify([1], q, p, generator)
        if verdict.accepted:
            outcomes["accepted"] += 1
        else:
            outcomes["resampled"].append(verdict.tokens[0])
    assert set(outcomes["resampled"]) == {0}
    assert abs(outcomes["accepted"] / 4000 - 0.5) < 0.04


def test_residual_mixes_tokens_in_proportion() -> None:
    p = torch.tensor([[0.4, 0.1, 0.3, 0.2, 0.0], [0.2] * 5])
    q = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])  # the draft always says 1; p(1)/q(1) = 0.1
    generator = make_generator(2)
    counts = torch.zeros(V)
    for _ in range(6000):
        verdict = verify([1], q, p, generator)
        if not verdict.accepted:
            counts[verdict.tokens[0]] += 1
    assert counts[1] == 0 and counts[4] == 0
    share = counts / counts.sum()
    expected = torch.tensor([4, 0, 3, 2, 0]) / 9  # max(0, p - q) normalised
    assert torch.allclose(share, expected, atol=0.03)


def test_q_zero_means_reject() -> None:
    p = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.2] * 5])
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])  # the draft "proposed" 3, which it gives probability 0
    for seed in range(50):
        verdict = verify([3], q, p, make_generator(seed))
        assert verdict.accepted == 0
        assert verdict.tokens[0] in (2, 3)


def test_p_equal_q_always_accepts() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 0.5, 0.5]])
    generator = make_generator(3)
    for _ in range(300):
        tokens = [int(torch.multinomial(probs[i], 1, generator=generator)) for i in range(2)]
        verdict = verify(tokens, probs[:2], probs, generator)
        assert verdict.accepted == 2
        assert verdict.tokens[-1] in (3, 4)


def test_zero_residual_falls_back_to_p() -> None:
    # p = q, and the draft proposes a token with q(x) = 0: rejected, and max(0, p - q) = 0 everywhere.
    probs = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.2] * 5])
    seen = {verify([0], probs[:1], probs, make_generator(seed)).tokens[0] for seed in range(60)}
    assert seen == {2, 3}


def test_one_hot_draft_q_none() -> None:
    # An n-gram draft: accept with probability p(x); on rejection, p without x (renormalised).
    p = torch.tensor([[0.3, 0.7, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    generator = make_generator(4)
    accepted = 0
    for _ in range(4000):
        verdict = verify([0], None, p, generator)
        assert verdict.q_draft == [1.0]
        if verdict.accepted:
            accepted += 1
            assert verdict.tokens == [0, 2]
        else:
            assert verdict.tokens == [1]
    assert abs(accepted / 4000 - 0.3) < 0.04


def test_greedy_one_hot_rows_accept_iff_argmax() -> None:
    p = peaked(1, 2, 0)  # one-hot, as processors.distribution gives in greedy mode
    assert verify([1, 2], peaked(1, 2), p, make_generator(0)).tokens == [1, 2, 0]
    assert verify([1, 3], peaked(1, 3), p, make_generator(0)).tokens == [1, 2]
    assert verify([4, 2], None, p, make_generator(0)).tokens == [1]


def test_gamma_zero_is_one_plain_step() -> None:
    verdict = verify([], None, peaked(3), make_generator(0))
    assert verdict.tokens == [3] and verdict.accepted == 0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="rows"):
        verify([1, 2], None, peaked(1, 2), make_generator(0))
    with pytest.raises(ValueError, match="shape"):
        verify([1], peaked(1, 2), peaked(1, 2), make_generator(0))


@pytest.mark.parametrize("seed", range(40))
def test_verify_greedy_is_verify_on_one_hot_p_and_q(seed: int) -> None:
    # Random drafts against random argmaxes (a small vocabulary, so that drafts are often right): the
    # greedy verdict equals `verify`'s on the one-hot rows, with a one-hot q and with q = None.
    rng = torch.Generator().manual_seed(seed)
    gamma = int(torch.randint(0, 6, (1,), generator=rng))
    argmax = torch.randint(0, 3, (gamma + 1,), generator=rng).tolist()
    draft = torch.randint(0, 3, (gamma,), generator=rng).tolist()
    p = peaked(*argmax)  # [γ+1, V], one-hot
    got = verify_greedy(draft, argmax)
    for q in (peaked(*draft) if gamma else torch.empty(0, V), None):
        assert got == verify(draft, q, p, make_generator(seed))
