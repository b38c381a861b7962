"""How far a candidate configuration (int4, another engine, other threads) moves a model from a reference.

On the same ids, both are read with the same sliding window (`scoring.windows`), and at every scored
position t (predicting token x_t) with reference distribution P and candidate distribution Q:

    KL_t(P || Q) = sum_j P_j (log P_j - log Q_j)      (nats; the mean over t is reported)
    top-1 agreement: argmax P == argmax Q
    Δp_t = Q(x_t) - P(x_t): the change in the text token's probability; the largest drop is min_t Δp_t

as llama.cpp's `perplexity --kl-divergence` reports them.

`greedy_diff` decodes a prompt greedily with both and reports the first generated position where they
part, with the reference's top-1/top-2 logit margin there. The *numeric noise* is measured on the
positions before it (both configurations read the same context and agree): the largest change, from
reference to candidate, of the reference's margin (logit of its top-1 minus logit of its top-2, in
each configuration's logits). A position whose margin is below that noise could flip either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.errors import UsageError
from llmgen.evaluate.scoring import Score, TokenScore, windows
from llmgen.loading.engines.base import SequenceCache

NewCache = Callable[[], SequenceCache]


@dataclass(frozen=True)
class TokenDivergence:
    kl: float
    agree: bool  # top-1 of reference and candidate are the same token
    p_reference: float  # of the text token
    p_candidate: float


@dataclass(frozen=True)
class Divergence:
    reference: Score
    candidate: Score
    tokens: list[TokenDivergence]  # tokens[i] is about ids[i + 1]

    @property
    def mean_kl(self) -> float:
        return math.fsum(t.kl for t in self.tokens) / len(self.tokens)

    @property
    def max_kl(self) -> float:
        return max(t.kl for t in self.tokens)

    @property
    def top1_agreement(self) -> float:
        return sum(t.agree for t in self.tokens) / len(self.tokens)

    @property
    def largest_drop(self) -> tuple[int, float, float]:
        """(position in ids, P(x_t), Q(x_t)) where Q(x_t) - P(x_t) is smallest."""
        i = min(range(len(self.tokens)), key=lambda j: self.tokens[j].p_candidate - self.tokens[j].p_reference)
        return i + 1, self.tokens[i].p_reference, self.tokens[i].p_candidate


@torch.inference_mode()
def divergence(reference: NewCache, candidate: NewCache, ids: Sequence[int], window: int,
               stride: int | None = None) -> Divergence:
    ids = [int(i) for i in ids]
    ref_scores: list[TokenScore] = []
    cand_scores: list[TokenScore] = []
    tokens: list[TokenDivergence] = []
    stride = stride or max(1, window // 2)
    for p_part, q_part in zip(windows(reference, ids, window, stride),
                              windows(candidate, ids, window, stride)):
        log_p, log_q = p_part.logprobs.double(), q_part.logprobs.double()  # [scored, vocab]
        if log_p.shape != log_q.shape:
            raise UsageError(f"the reference has {log_p.shape[-1]} tokens in its vocabulary and the candidate "
                             f"{log_q.shape[-1]}: they cannot be compared token by token")
        p = log_p.exp()
        # NOTE: where P_j = 0 the term is 0 (not 0 * -inf); where Q_j = 0 < P_j it is +inf, as it should be
        kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1).clamp_min(0.0)  # [scored]
        agree = log_p.argmax(-1) == log_q.argmax(-1)
        targets = torch.tensor(ids[p_part.first:p_part.first + log_p.shape[0]])
        lp_ref = log_p.gather(-1, targets[:, None])[:, 0].tolist()
        lp_cand = log_q.gather(-1, targets[:, None])[:, 0].tolist()
        for t, k, a, lr, lc in zip(targets.tolist(), kl.tolist(), agree.tolist(), lp_ref, lp_cand):
            ref_scores.append(TokenScore(t, lr))
            cand_scores.append(TokenScore(t, lc))
            tokens.append(TokenDivergence(k, a, math.exp(lr), math.exp(lc)))
    return Divergence(Score(ids, ref_scores), Score(ids, cand_scores), tokens)


def corpus_kl(reference: Any, candidate: Any, tokens: int = 512) -> float:
    """Mean KL(reference || candidate) over the first `tokens` tokens of the default corpus (`corpus.py`), in one
    window: the quality column of `llmgen bench` for int4 rows. Both are `LoadedModel`s with one tokenizer."""
    from llmgen.evaluate import corpus

    ids = [int(i) for i in reference.tokenizer(corpus.load())["input_ids"]][:tokens]
    window = min(len(ids), reference.context_length, candidate.context_length)
    return divergence(reference.engine.sequence, candidate.engine.sequence, ids[:window], window).mean_kl


@dataclass(frozen=True)
class GreedyDiff:
    reference: list[int]  # the greedy continuations
    candidate: list[int]
    first: int | None  # the first generated position (0-based) where they differ; None: never
    margin_reference: float | None  # at `first`: the reference's top-1 minus top-2 logit
    margin_candidate: float | None  # at `first`: the same two tokens in the candidate's logits
    noise: float  # the largest change of the margin before `first` (see the module docstring)
    fragile: list[int]  # generated positions whose reference margin is below the noise


def _greedy(new_cache: NewCache, prompt: list[int], steps: int, eos: frozenset[int]) -> list[int]:
    out: list[int] = []
    for token in plain_tokens(new_cache(), prompt, DecodingConfig(temperature=0.0), make_generator(0)):
        out.append(token.id)
        if token.id in eos or len(out) >= steps:
            break
    return out


@torch.inference_mode()
def greedy_diff(reference: NewCache, candidate: NewCache, prompt_ids: Sequence[int], steps: int,
                eos_token_ids: frozenset[int] = frozenset()) -> GreedyDiff:
    prompt = [int(i) for i in prompt_ids]
    ref = _greedy(reference, prompt, steps, eos_token_ids)
    cand = _greedy(candidate, prompt, steps, eos_token_ids)
    first = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), None)
    if first is None and len(ref) != len(cand):
        first = min(len(ref), len(cand))
    # Both read the reference's continuation: rows predicting its tokens, [len(ref), vocab] each
    context = prompt + ref
    rows = slice(len(prompt) - 1, len(context) - 1)
    p_logits = reference().forward(context, all_logits=True)[rows].double()
    q_logits = candidate().forward(context, all_logits=True)[rows].double()
    top2 = p_logits.topk(2, dim=-1).indices  # [len(ref), 2]
    margin_p = (p_logits.gather(-1, top2[:, :1]) - p_logits.gather(-1, top2[:, 1:]))[:, 0]  # [len(ref)]
    margin_q = (q_logits.gather(-1, top2[:, :1]) - q_logits.gather(-1, top2[:, 1:]))[:, 0]
    agreed = len(ref) if first is None else first
    noise = float((margin_p[:agreed] - margin_q[:agreed]).abs().max()) if agreed else 0.0
    fragile = [i for i, m in enumerate(margin_p.tolist()) if m < noise]
    at = first if first is not None and first < len(ref) else None
    return GreedyDiff(ref, cand, first,
                      None if at is None else float(margin_p[at]), None if at is None else float(margin_q[at]),
                      noise, fragile)
