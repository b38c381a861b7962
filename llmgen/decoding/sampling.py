"""The final pick: greedy (argmax) or a random draw with an explicit `torch.Generator`.

The random draw uses the exponential race: for E_j ~ Exp(1) independent, argmax_j p_j / E_j is
distributed as p / sum(p). It needs no normalisation, so it also draws from an unnormalised
residual such as max(0, p - q) in speculative decoding, and zero-probability tokens can never win.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from fresh entropy when `seed` is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def pick(processed: Tensor, greedy: bool, generators: Sequence[torch.Generator]) -> Tensor:
    """The pick, for every decoding path: processed logits [rows, vocab] -> tokens [rows].

    Greedy: the argmax of each row. Sampling: row r draws from softmax(processed[r]) with its own
    `generators[r]` (so a row's draws never depend on the rows beside it)."""
    if greedy:
        return greedy_pick(processed)
    probs = processed.softmax(dim=-1)  # [rows, vocab]
    return torch.cat([random_pick(probs[r:r + 1], generator) for r, generator in enumerate(generators)])


def greedy_pick(logits: Tensor) -> Tensor:
    """Argmax over the last dimension (the first index wins a tie)."""
    return logits.argmax(dim=-1)


def random_pick(weights: Tensor, generator: torch.Generator) -> Tensor:
    """Draw one index per row from `weights` ([..., vocab], non-negative, need not sum to 1)."""
    # NOTE: float64 noise so that the race has no ties in practice, even over 50k tokens.
    noise = torch.empty(weights.shape, dtype=torch.float64, device=weights.device).exponential_(1.0, generator=generator)
    return (weights.to(torch.float64) / noise).argmax(dim=-1)
