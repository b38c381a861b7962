"""Mirostat v2 (arXiv:2007.14966; llama.cpp's `llama_sampler_mirostat_v2`).

mu starts at 2 tau. Each step keeps the tokens whose surprise -log2 p_j is <= mu (the top token
always stays); after a token t is drawn from the final distribution q, with s = -log2 q(t),
    mu <- mu - eta * (s - tau).
So mu after n tokens is a function of their surprises, which the context carries (`Context.surprises`,
one per generated token): nothing to roll back after a rejected speculative round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import RowView, Step, need_rows
from llmgen.decoding.processors.truncation import NEG_INF


def mirostat_mu(surprises: Sequence[float], config: DecodingConfig) -> float:
    mu = 2.0 * config.mirostat_tau
    for s in surprises:
        mu -= config.mirostat_eta * (s - config.mirostat_tau)
    return mu


def apply_mirostat(logits: Tensor, mus: Sequence[float]) -> Tensor:
    """logits [rows, vocab], one mu per row: keep p_j >= 2^-mu, and the top token."""
    surprise = -torch.log_softmax(logits, dim=-1) / math.log(2)  # bits
    mu = torch.tensor(list(mus), dtype=surprise.dtype, device=logits.device)[:, None]
    drop = (surprise > mu) & (logits < logits.amax(dim=-1, keepdim=True))
    return logits.masked_fill(drop, NEG_INF)


def surprise(processed: Tensor, token: int) -> float:
    """-log2 q(token), q = softmax(processed) ([vocab]): what the token tells Mirostat."""
    return float(-torch.log_softmax(processed.to(torch.float64), dim=-1)[token]) / math.log(2)


def stage(config: DecodingConfig) -> Step:
    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        return apply_mirostat(logits, [mirostat_mu(r.surprises, config) for r in need_rows(rows, "mirostat")])

    return step
