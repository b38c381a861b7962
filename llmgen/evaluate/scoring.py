"""Score a text: each token's log-probability under a model, the negative log-likelihood and the perplexity.

For ids x_0 .. x_{n-1}, token x_t (t >= 1) is scored from the logits at the position before it:

    logprob_t = log_softmax(logits_{t-1})[x_t]          (float32 logits, the engine's own)
    NLL = -sum_{t=1}^{n-1} logprob_t,   perplexity = exp(NLL / (n - 1))

The first token has no prediction, as in HF's loss (which shifts the labels by one).

Texts longer than the window L (the model's context by default) are read with a sliding window,
exactly as HF's perplexity guide does ("Perplexity of fixed-length models"), with stride S < L:

    prev_end = 0
    for begin in 0, S, 2S, ...:
        end = min(begin + L, n)
        one forward over ids[begin:end] with every position's logits
        score the tokens prev_end .. end-1 (the first window: 1 .. end-1)
        prev_end = end; stop once end == n

Every token is scored exactly once, each with at least L - S tokens of context (except in the first
window). `windows` yields the log-probabilities window by window, so that a caller keeps only what it
needs: [scored, vocab] rows of one window are never more than L rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmgen.errors import UsageError
from llmgen.loading.engines.base import SequenceCache


@dataclass(frozen=True)
class Window:
    """The log-probabilities of the tokens `first` .. `first + len(logprobs) - 1` of the text."""

    first: int
    logprobs: Tensor  # [scored, vocab], float32: row i predicts token first + i


def check_window(length: int, window: int, stride: int) -> None:
    if length < 2:
        raise UsageError(f"there is nothing to score: the text is {length} token{'s' if length != 1 else ''} "
                         "(a token is scored from the ones before it)")
    if window < 2:
        raise UsageError(f"--window must be at least 2 tokens, not {window}")
    if not 1 <= stride < window:  # NOTE: at stride = window the first token of each window would go unscored
        raise UsageError(f"--stride must be at least 1 and less than the window ({window} tokens), not {stride}")


@torch.inference_mode()
def windows(new_cache: Callable[[], SequenceCache], ids: Sequence[int], window: int,
            stride: int) -> Iterator[Window]:
    """HF's sliding window over `ids`: one fresh cache and one forward (all logits) per window."""
    ids = list(ids)
    check_window(len(ids), window, stride)
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        logits = new_cache().forward(ids[begin:end], all_logits=True)  # [end - begin, vocab]
        first = max(prev_end, begin + 1)  # the first token this window scores
        rows = logits[first - 1 - begin:end - 1 - begin]  # [end - first, vocab]: row i predicts ids[first + i]
        yield Window(first, torch.log_softmax(rows.float(), dim=-1))
        prev_end = end
        if end == len(ids):
            break


@dataclass(frozen=True)
class TokenScore:
    id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens at this position


@dataclass(frozen=True)
class Score:
    """A scored text: `tokens[i]` is ids[i + 1] with its log-probability."""

    ids: list[int]
    tokens: list[TokenScore]

    @property
    def nll(self) -> float:
        return -math.fsum(t.logprob for t in self.tokens)

    @property
    def mean_nll(self) -> float:
        return self.nll / len(self.tokens)

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def score_ids(new_cache: Callable[[], SequenceCache], ids: Sequence[int], window: int, stride: int | None = None,
              top: int = 0) -> Score:
    """Score every token of `ids` but the first; `top` alternatives per position (0: none)."""
    ids = [int(i) for i in ids]
    tokens: list[TokenScore] = []
    for part in windows(new_cache, ids, window, stride or max(1, window // 2)):
        targets = torch.tensor(ids[part.first:part.first + part.logprobs.shape[0]])  # [scored]
        chosen = part.logprobs.gather(-1, targets[:, None])[:, 0].tolist()
        alternatives: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if top > 0:
            values, indices = part.logprobs.topk(min(top, part.logprobs.shape[-1]), dim=-1)  # [scored, top]
            alternatives = [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        tokens.extend(TokenScore(t, lp, alt) for t, lp, alt in zip(targets.tolist(), chosen, alternatives))
    return Score(ids, tokens)
