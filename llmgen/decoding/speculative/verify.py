"""The verifier of speculative decoding: pure, with the names of the paper (Leviathan et al., 2023;
Chen et al., 2023). It needs no model, so it can be tested with hand-made tensors.

Given γ draft tokens x_1..x_γ, the distributions the draft sampled them from, q = q_1..q_γ, and the
target's distributions at the same positions plus one more, p = p_1..p_{γ+1}:

    for i = 1..γ:
        accept x_i with probability min(1, p_i(x_i) / q_i(x_i))
        at the first rejection: sample a replacement from norm(max(0, p_i - q_i)), and stop
    if all γ were accepted: sample a bonus token from p_{γ+1}

Every emitted token is then distributed exactly as the target would have sampled it. The tokens are
named as vLLM names them: *accepted* draft tokens, then one *resampled* (recovered) token at the first
rejection, or one *bonus* token after full acceptance. A round yields 1..γ+1 tokens.

Greedy decoding needs no branch here: in greedy mode `processors.distribution` returns one-hot p (and
q), so x_i is accepted iff it is the target's argmax (p_i(x_i) = 1), and the replacement at a rejection
is the argmax (max(0, p_i - q_i) is the one-hot of the argmax). `verify_greedy` gives that same verdict
from the argmaxes alone, for the loop: building [γ+1, vocab] one-hot rows and racing float64 noise over
the vocabulary cost 2-4 ms a round at 49k tokens and 10+ ms at Gemma's 262k, a quarter of a step or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmgen.decoding.sampling import random_pick


@dataclass(frozen=True)
class Verdict:
    """The outcome of one round."""

    tokens: list[int]  # the accepted draft tokens, then the resampled or bonus token
    accepted: int  # how many draft tokens were accepted (0..γ)
    p_draft: list[float]  # p_i(x_i) for each proposed token
    q_draft: list[float]  # q_i(x_i) for each proposed token (1.0 for a one-hot draft)

    @property
    def last_origin(self) -> str:
        """'bonus' after full acceptance, else 'resampled'."""
        return "bonus" if self.accepted == len(self.p_draft) else "resampled"


def verify(draft_tokens: Sequence[int], q: Tensor | None, p: Tensor,
           generator: torch.Generator) -> Verdict:
    """Accept a prefix of `draft_tokens` and sample the token after it.

    draft_tokens: γ proposed tokens (γ may be 0: then this is one plain step from p_1).
    q: [γ, vocab], the distributions the draft sampled from; None for a one-hot draft (n-gram), q_i(x_i) = 1.
    p: [γ+1, vocab], the target's distributions at the same positions, and one more for the bonus.
    """
    draft = [int(t) for t in draft_tokens]
    gamma = len(draft)
    if p.shape[0] != gamma + 1:
        raise ValueError(f"p has {p.shape[0]} rows; {gamma} draft tokens need {gamma + 1}")
    if q is not None and q.shape != (gamma, p.shape[1]):
        raise ValueError(f"q has shape {tuple(q.shape)}; expected ({gamma}, {p.shape[1]})")
    index = torch.arange(gamma, device=p.device)
    x = torch.as_tensor(draft, dtype=torch.long, device=p.device)  # [γ]
    # NOTE: float64 throughout, so that p(x) / q(x) and the residual keep their precision.
    p_x = p[index, x].double()  # [γ]
    q_x = q[index, x].double() if q is not None else torch.ones(gamma, dtype=torch.float64, device=p.device)
    # NOTE: float64 uniforms in [0, 1). Accept iff u < p/q, written u * q < p: no division, and
    # q(x) = 0 (a token the draft could not have sampled) is always rejected, p(x) = 0 too.
    u = torch.rand(gamma, dtype=torch.float64, device=p.device, generator=generator)
    rejected = (u * q_x >= p_x) | (q_x <= 0)  # [γ]
    accepted = int(rejected.int().argmax()) if bool(rejected.any()) else gamma
    p_list, q_list = p_x.tolist(), q_x.tolist()
    if accepted == gamma:
        # Every draft token accepted: the bonus token, from the target's last row.
        last = int(random_pick(p[gamma], generator))
        return Verdict([*draft, last], gamma, p_list, q_list)
    # First rejection at position `accepted`: resample from the residual norm(max(0, p - q)).
    p_i = p[accepted].double()  # [vocab]
    q_i = q[accepted].double() if q is not None else _one_hot(draft[accepted], p.shape[1], p.device)
    residual = (p_i - q_i).clamp_min(0.0)  # [vocab], unnormalised: random_pick needs no normalisation
    if not bool(residual.sum() > 0):
        # NOTE: max(0, p - q) is all zero only when p = q; the rejection then had probability zero
        # except for q(x) = 0 or rounding, and the right distribution to sample from is p itself.
        residual = p_i
    last = int(random_pick(residual, generator))
    return Verdict([*draft[:accepted], last], accepted, p_list, q_list)


def verify_greedy(draft_tokens: Sequence[int], argmax: Sequence[int]) -> Verdict:
    """`verify` for greedy p (and q): p_i is the one-hot of the target's argmax a_i, `argmax` = a_1..a_{γ+1}.

    x_i is accepted while x_i = a_i (p_i(x_i) = 1; q_i(x_i) = 1 for a greedy or one-hot draft); at the first
    rejection the residual max(0, p_i - q_i) is the one-hot of a_i, and after full acceptance the bonus is
    a_{γ+1}. So the verdict is `verify`'s on the one-hot p and q, token for token (a test checks it).
    """
    draft = [int(t) for t in draft_tokens]
    targets = [int(t) for t in argmax]
    if len(targets) != len(draft) + 1:
        raise ValueError(f"{len(targets)} argmaxes; {len(draft)} draft tokens need {len(draft) + 1}")
    accepted = next((i for i, (x, a) in enumerate(zip(draft, targets)) if x != a), len(draft))
    p_x = [float(x == a) for x, a in zip(draft, targets)]  # p_i(x_i) of every proposed token, as `verify` reports
    return Verdict([*draft[:accepted], targets[accepted]], accepted, p_x, [1.0] * len(draft))


def _one_hot(token: int, vocab: int, device: torch.device) -> Tensor:
    q_i = torch.zeros(vocab, dtype=torch.float64, device=device)
    q_i[token] = 1.0
    return q_i
