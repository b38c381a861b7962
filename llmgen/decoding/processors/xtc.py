"""XTC, "exclude top choices" (llama.cpp's `llama_sampler_xtc`, from text-generation-webui #6335).

With probability P, the cut applies: when two or more tokens have p_j >= threshold, all of them
are removed but the least likely (ties at that probability all stay). Otherwise nothing changes.

XTC is random, so the distribution a token is drawn from is the mixture
    (1 - P) * D(chain without the cut) + P * D(chain with the cut)
where D runs the rest of the chain (the stages after XTC) on each branch. The chain computes that
mixture exactly (`processors.stages`) rather than drawing the coin, so p under speculation is the
mixture, and drawing from it is drawing the coin and then the token.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmgen.decoding.processors.truncation import NEG_INF


def xtc_cut(logits: Tensor, threshold: float) -> Tensor:
    """The cut branch: logits [rows, vocab] with the top choices removed where two or more qualify."""
    probs = logits.softmax(dim=-1)
    top = probs >= threshold
    least = torch.where(top, probs, math.inf).amin(dim=-1, keepdim=True)  # [rows, 1]
    drop = top & (probs > least) & (top.sum(dim=-1, keepdim=True) >= 2)
    return logits.masked_fill(drop, NEG_INF)


def mixture(branches: list[tuple[float, Tensor]]) -> Tensor:
    """log(sum_b w_b * softmax(L_b)): logits whose softmax is the mixture of the branches."""
    if len(branches) == 1:
        return branches[0][1]
    terms = [math.log(w) + torch.log_softmax(branch, dim=-1) for w, branch in branches if w > 0]
    return torch.logsumexp(torch.stack(terms), dim=0)
