"""Truncation: each keeps a set of tokens and gives the others -inf. p = softmax(logits) of the input.

- top-k: keep tokens whose logit is >= the k-th largest (ties at the boundary are kept, as in HF).
- top-p (HF's `TopPLogitsWarper`): sort ascending, drop tokens whose cumulative probability is
  <= 1 - p; the most likely token always stays. This keeps the smallest set whose mass reaches p.
- min-p: drop tokens with p_j < P * max p (the top token always stays).
- typical-p (HF's `TypicalLogitsWarper`): with entropy H = -sum p log p, sort tokens by |-log p_j - H|
  ascending and keep them until their mass reaches P (the first token always stays).
- epsilon (HF's `EpsilonLogitsWarper`): drop p_j < E; the top token always stays.
- eta (HF's `EtaLogitsWarper`): drop p_j < min(E, sqrt(E) * exp(-H)); the top token always stays.
- top-n-sigma (llama.cpp): over the finite logits l, keep l_j >= max l - N * std(l) (population std).
  It is invariant under temperature: 1/T scales max and std alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG_INF = float("-inf")

# top-p's prefilter: the sizes of top-k tried before the full sort (`apply_top_p`).
PREFILTER = (256, 2048)
# NOTE: a decision of the prefilter closer than this to top-p's boundary goes to the full sort, whose
# float32 cumulative sum is the reference; farther than this, both sums round to the same side.
BOUNDARY_TOLERANCE = 1e-4


def apply_top_k(logits: Tensor, k: int) -> Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [rows, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_sorted(logits: Tensor, p: float) -> Tensor:
    """Top-p by a full sort of the vocabulary: HF's rule as HF writes it (the reference)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [rows, vocab], ascending
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1] = False  # NOTE: the most likely token always stays, even if rounding says otherwise
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def apply_top_p(logits: Tensor, p: float) -> Tensor:
    """Top-p without sorting the whole vocabulary, when the top k tokens prove where the cut lies.

    A token of descending rank r is kept iff the mass above it, A_r = p_1 + ... + p_{r-1}, is < p
    (that is HF's `cumulative > 1 - p`). Among the top k (by `torch.topk`), the rule is decided there
    when (a) the tokens of probability <= p_k (the k-th largest) are all dropped: the mass strictly
    above p_k is >= p (+ tolerance), so no order of ties at the k-th place matters; (b) the last
    kept and the first dropped tokens differ in probability (no tie straddles the cut, whose side
    would depend on a sort's order of equal keys); (c) no A_r lies within the tolerance of p. A row
    that fails goes to a larger k, then to the full sort (`top_p_sorted`). The result is the same
    set of tokens; it is tested against the full sort on adversarial tables (ties, flat, peaked).
    """
    if p >= 1.0:
        return logits
    vocab = logits.shape[-1]
    drop = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    todo = torch.arange(logits.shape[0], device=logits.device)
    norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # [rows, 1]
    for k in PREFILTER:
        if k * 4 > vocab or todo.numel() == 0:
            break
        values, indices = torch.topk(logits[todo], k + 1, dim=-1)  # [t, k+1], descending
        probs = (values - norm[todo]).to(torch.float64).exp()  # [t, k+1]
        above = probs.cumsum(dim=-1) - probs  # mass strictly above each rank
        keep = above[:, :k] < p  # [t, k]
        kept = keep.sum(dim=-1)  # >= 1
        kth = probs[:, k - 1:k]
        mass_over_kth = (probs[:, :k] * (probs[:, :k] > kth)).sum(dim=-1)
        last_kept = probs.gather(1, (kept - 1)[:, None])[:, 0]
        first_dropped = probs.gather(1, kept[:, None])[:, 0]
        near = ((above[:, :k] - p).abs() < BOUNDARY_TOLERANCE).any(dim=-1)
        decided = (mass_over_kth >= p + BOUNDARY_TOLERANCE) & (first_dropped < last_kept) & ~near
        if bool(decided.all()) and todo.numel() == logits.shape[0]:  # the usual case: every row at once
            return logits.masked_fill(drop.scatter(1, indices[:, :k], ~keep), NEG_INF)
        rows = todo[decided]
        if rows.numel():
            drop[rows] = drop[rows].scatter(1, indices[decided, :k], ~keep[decided])
        todo = todo[~decided]
    out = logits.masked_fill(drop, NEG_INF)
    if todo.numel():
        out[todo] = top_p_sorted(logits[todo], p)
    return out


def apply_min_p(logits: Tensor, p: float) -> Tensor:
    if p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = p * probs.amax(dim=-1, keepdim=True)
    drop = probs < threshold
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, NEG_INF)


def apply_typical_p(logits: Tensor, mass: float) -> Tensor:
    if mass >= 1.0:
        return logits
    normalized = torch.log_softmax(logits, dim=-1)
    p = normalized.exp()
    entropy = -(normalized * p).nansum(-1, keepdim=True)  # NOTE: nansum: -inf * 0 for cut tokens
    shifted = (-normalized - entropy).abs()  # [rows, vocab]; cut tokens get +inf and sort last
    sorted_scores, order = torch.sort(shifted, descending=False)
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=-1).clamp(max=logits.shape[-1] - 1)  # [rows]
    drop_sorted = sorted_scores > sorted_scores.gather(-1, last[:, None])
    drop_sorted[..., :1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def _keep_top(logits: Tensor, drop: Tensor) -> Tensor:
    """`drop`, except the tokens at the maximum logit (HF's min_tokens_to_keep = 1)."""
    return logits.masked_fill(drop & (logits < logits.amax(dim=-1, keepdim=True)), NEG_INF)


def apply_epsilon(logits: Tensor, epsilon: float) -> Tensor:
    if epsilon <= 0:
        return logits
    return _keep_top(logits, logits.softmax(dim=-1) < epsilon)


def entropy(logits: Tensor) -> Tensor:
    """H = -sum p log p in nats, per row: [rows, 1]. Cut tokens (p = 0) add nothing."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).nan_to_num(0.0).sum(dim=-1, keepdim=True)


def apply_eta(logits: Tensor, epsilon: float) -> Tensor:
    if epsilon <= 0:
        return logits
    eta = torch.clamp(math.sqrt(epsilon) * torch.exp(-entropy(logits)), max=epsilon)  # [rows, 1]
    return _keep_top(logits, logits.softmax(dim=-1) < eta)


def apply_top_n_sigma(logits: Tensor, n: float) -> Tensor:
    if n <= 0:
        return logits
    finite = torch.isfinite(logits)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    values = torch.where(finite, logits, 0.0)
    mean = values.sum(dim=-1, keepdim=True) / count
    centred = torch.where(finite, logits - mean, 0.0)
    std = ((centred * centred).sum(dim=-1, keepdim=True) / count).sqrt()
    drop = (logits < logits.amax(dim=-1, keepdim=True) - n * std) & (count > 1)  # one token: nothing to cut
    return logits.masked_fill(drop, NEG_INF)
