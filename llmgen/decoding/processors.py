"""Pure logits transforms. Each takes logits `[rows, vocab]` and returns new logits; none mutates its input.

The chain, in this fixed order (the order HF `generate()` applies its warpers in, too):

    [mask] -> penalties -> temperature -> top-k -> top-p -> min-p -> pick

0. Mask (only with a constraint: `--schema`, `--json-object`, `--regex`, `--choice`, `--grammar`): tokens
   the grammar forbids get -inf, first, as vLLM applies its structured-output bitmask, so that
   temperature and truncation act on allowed tokens only. The mask comes from the sequence's matcher
   (`constraints.py`), which is stateful and owned by the sequence; this function only applies it.
1. Penalties, computed from token counts `c[j]` over the *penalty scope* (the generated tokens, or the
   prompt and the generated tokens; optionally only the last N of them):
     - repetition (HF/CTRL): for every j with c[j] > 0, logit[j] / R if logit[j] > 0 else logit[j] * R
     - frequency and presence (OpenAI): logit[j] -= c[j] * F + (c[j] > 0) * P
   Repetition is applied first, then frequency and presence, as vLLM does.
2. Temperature: logit / T. (T = 0 is greedy and never reaches this function.)
3. Top-k: keep tokens whose logit is >= the k-th largest (ties at the boundary are kept, as in HF).
4. Top-p: sort ascending, drop tokens whose cumulative probability is <= 1 - p; the most likely token
   always stays. This keeps the smallest set whose probability reaches p.
5. Min-p: drop tokens whose probability is < p * max probability (the top token always stays).

Filtered tokens get -inf. The pick (greedy or random) lives in `sampling.py`.

Counts are derived from the context on every step; nothing here keeps state that would have to be
rolled back after a rejected speculative round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig

NEG_INF = float("-inf")


def penalty_context(prompt_ids: Sequence[int], generated_ids: Sequence[int], config: DecodingConfig) -> list[int]:
    """The tokens the penalties count: the scope ('generated' or 'all'), cut to the last `penalty_window`."""
    tokens = list(generated_ids) if config.penalty_scope == "generated" else [*prompt_ids, *generated_ids]
    if config.penalty_window:
        tokens = tokens[-config.penalty_window:]
    return tokens


def token_counts(tokens: Sequence[int], vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
    """c[j] = how many times token j occurs in `tokens`. Shape [vocab]."""
    if not tokens:
        return torch.zeros(vocab_size, device=device)
    ids = torch.as_tensor(list(tokens), dtype=torch.long, device=device)
    return torch.bincount(ids, minlength=vocab_size)[:vocab_size].to(torch.float32)


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
    """Step 1. `counts` is [rows, vocab] (or broadcastable to it)."""
    logits = apply_repetition_penalty(logits, counts, config.repetition_penalty)
    return apply_frequency_presence(logits, counts, config.frequency_penalty, config.presence_penalty)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: Tensor, k: int) -> Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [rows, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: Tensor, p: float) -> Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [rows, vocab], ascending
    drop_sorted = cumulative <= (1 - p)
    drop_sorted[..., -1] = False  # NOTE: the most likely token always stays, even if rounding says otherwise
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def apply_min_p(logits: Tensor, p: float) -> Tensor:
    if p <= 0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = p * probs.amax(dim=-1, keepdim=True)
    drop = probs < threshold
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, NEG_INF)


def apply_mask(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Step 0: `allowed` is [rows, vocab] (or [vocab]) bool; forbidden tokens get -inf. None = no constraint."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), NEG_INF)


STAGES = ("penalties", "temperature", "top_k", "top_p", "min_p")


@dataclass(frozen=True)
class Stage:
    """The logits after one step of the chain. `on` is False when the step left them as they were."""

    name: str  # "raw", then the names of STAGES
    logits: Tensor  # [rows, vocab], float32
    on: bool


def stages(logits: Tensor, counts: Tensor | None, config: DecodingConfig,
           allowed: Tensor | None = None) -> list[Stage]:
    """The chain step by step: raw -> [mask] -> penalties -> temperature -> top-k -> top-p -> min-p.

    The "mask" stage is listed only with a constraint (`allowed`, [rows, vocab] bool).

    `process` is the last stage, and `llmgen inspect` shows every stage, so that what it shows is
    what decoding does. A stage that is off (its "off" value, or a warper in greedy mode: it cannot
    change the argmax) is listed with `on = False` and its input unchanged.
    """
    logits = logits.to(torch.float32)
    out = [Stage("raw", logits, True)]
    if allowed is not None:
        logits = apply_mask(logits, allowed)
        out.append(Stage("mask", logits, True))
    penalise = counts is not None and config.uses_penalties
    if penalise:
        logits = apply_penalties(logits, counts, config)
    out.append(Stage("penalties", logits, penalise))
    warp = not config.greedy
    steps = (("temperature", config.temperature != 1.0, lambda x: apply_temperature(x, config.temperature)),
             ("top_k", 0 < config.top_k < logits.shape[-1], lambda x: apply_top_k(x, config.top_k)),
             ("top_p", config.top_p < 1.0, lambda x: apply_top_p(x, config.top_p)),
             ("min_p", config.min_p > 0, lambda x: apply_min_p(x, config.min_p)))
    for name, active, apply in steps:
        if warp and active:
            logits = apply(logits)
        out.append(Stage(name, logits, warp and active))
    return out


def process(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None) -> Tensor:
    """The whole chain for sampling: [mask] -> penalties -> temperature -> top-k -> top-p -> min-p.

    In greedy mode only the mask and the penalties apply: the warpers cannot change the argmax.
    """
    return stages(logits, counts, config, allowed)[-1].logits


def distribution(logits: Tensor, counts: Tensor | None, config: DecodingConfig,
                 allowed: Tensor | None = None) -> Tensor:
    """The distribution a token is drawn from, [rows, vocab]. Greedy is the one-hot of the argmax."""
    return distribution_of(process(logits, counts, config, allowed), config)


def distribution_of(processed: Tensor, config: DecodingConfig) -> Tensor:
    """`distribution` from logits that went through `process` already."""
    if config.greedy:
        return torch.nn.functional.one_hot(processed.argmax(dim=-1), processed.shape[-1]).to(torch.float32)
    return processed.softmax(dim=-1)
