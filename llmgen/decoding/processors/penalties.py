"""The count penalties: c[j] = how often token j occurs in the penalty scope (`context.penalty_context`).

- repetition (HF/CTRL): for every j with c[j] > 0, logit[j] / R if logit[j] > 0 else logit[j] * R
- frequency and presence (OpenAI): logit[j] -= c[j] * F + (c[j] > 0) * P

Repetition is applied first, then frequency and presence, as vLLM does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import RowView, Step


def apply_repetition_penalty(logits: Tensor, counts: Tensor, penalty: float) -> Tensor:
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalized, logits)


def apply_frequency_presence(logits: Tensor, counts: Tensor, frequency: float, presence: float) -> Tensor:
    if frequency == 0 and presence == 0:
        return logits
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def apply_penalties(logits: Tensor, counts: Tensor, config: DecodingConfig) -> Tensor:
    """`counts` is [rows, vocab] (or broadcastable to it)."""
    logits = apply_repetition_penalty(logits, counts, config.repetition_penalty)
    return apply_frequency_presence(logits, counts, config.frequency_penalty, config.presence_penalty)


def stage(config: DecodingConfig) -> Step:
    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        assert counts is not None  # `reads_counts`: the chain skips the stage without counts
        return apply_penalties(logits, counts, config)

    return step
