"""Logits tables for the distribution tests: a tiny model's logits for every context a run can reach,
served by `TableLM` (a `SequenceCache` stand-in), the exact joint distribution of a few tokens by
enumeration, and the chi-square test of samples against it."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from scipy import stats as scipy_stats

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import distribution, penalty_context, token_counts
from llmgen.loading import models

LENGTH = 3  # generated tokens per sample
SAMPLES = 10_000
VOCAB = 13


class TableLM:
    """A stand-in for CachedLM that looks the logits of each context up in a table."""

    def __init__(self, table: dict[tuple[int, ...], torch.Tensor]) -> None:
        self.table = table
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        start = len(self.tokens)
        self.tokens.extend(token_ids)
        rows = [self.table[tuple(self.tokens[:end])] for end in range(start + 1, len(self.tokens) + 1)]
        return torch.stack(rows if all_logits else rows[-1:])  # [k or 1, vocab]

    def rollback(self, length: int) -> None:
        del self.tokens[length:]


class MemoLM:
    """A `SequenceCache` whose next-token logits [1, vocab] come from `logits_of(context)`, each context's
    computed once and kept in `memo` (shared across samples): a greedy draft meets few contexts, so 10^4
    samples need a few hundred forwards."""

    def __init__(self, logits_of: Callable[[tuple[int, ...]], torch.Tensor],
                 memo: dict[tuple[int, ...], torch.Tensor]) -> None:
        self.logits_of, self.memo = logits_of, memo
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> torch.Tensor:
        assert not all_logits
        self.tokens.extend(token_ids)
        key = tuple(self.tokens)
        if key not in self.memo:
            self.memo[key] = self.logits_of(key)
        return self.memo[key][None]  # [1, vocab]

    def rollback(self, length: int) -> None:
        del self.tokens[length:]


def logits_table(path: Path, prompt: list[int], depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Next-token logits after every prefix of the prompt, and after prompt + s for every s of length
    0..depth (one batch per length)."""
    model = models.load(str(path)).model
    table = {}
    with torch.inference_mode():
        prefill = model(input_ids=torch.tensor([prompt])).logits[0].float()  # [len(prompt), vocab]
        table.update({tuple(prompt[:end + 1]): prefill[end] for end in range(len(prompt))})
        for n in range(depth + 1):
            suffixes = list(itertools.product(range(VOCAB), repeat=n))
            batch = torch.tensor([[*prompt, *s] for s in suffixes])
            logits = model(input_ids=batch).logits[:, -1].float()  # [VOCAB^n, vocab]
            table.update({tuple(row): logits[i] for i, row in enumerate(batch.tolist())})
    return table


def exact_joint(table: dict, prompt: list[int], config: DecodingConfig) -> dict[tuple[int, ...], float]:
    """P(t_1..t_LENGTH) of plain sampling from the target, by enumeration."""
    joint = {(): 1.0}
    for _ in range(LENGTH):
        following = {}
        for prefix, mass in joint.items():
            counts = token_counts(penalty_context(prompt, prefix, config), VOCAB)[None]
            probs = distribution(table[(*prompt, *prefix)][None], counts, config)[0].double()
            for token in torch.nonzero(probs).flatten().tolist():
                following[(*prefix, token)] = mass * float(probs[token])
        joint = following
    return joint


def chi_square_p_value(observed: Counter, expected: dict[tuple[int, ...], float], total: int) -> float:
    assert set(observed) <= set(expected), f"impossible outcomes sampled: {set(observed) - set(expected)}"
    cells = sorted(expected, key=lambda k: -expected[k])
    obs, exp, rest_obs, rest_exp = [], [], 0, 0.0
    for cell in cells:  # NOTE: cells expected fewer than 5 times are pooled, as the test requires
        if expected[cell] * total >= 5:
            obs.append(observed[cell])
            exp.append(expected[cell] * total)
        else:
            rest_obs += observed[cell]
            rest_exp += expected[cell] * total
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    exp_sum = sum(exp)
    exp = [e * total / exp_sum for e in exp]  # absorb float rounding
    return float(scipy_stats.chisquare(obs, exp).pvalue)


CONFIGS = {
    "temperature-topk-topp-penalties": DecodingConfig(
        temperature=0.8, top_k=6, top_p=0.9, presence_penalty=0.8, frequency_penalty=0.6, max_new_tokens=LENGTH),
    "minp-repetition-scope-all-window": DecodingConfig(
        temperature=1.3, min_p=0.05, repetition_penalty=1.5, presence_penalty=-0.5, penalty_scope="all",
        penalty_window=3, max_new_tokens=LENGTH),
}


def prompt_tables(target: Path, draft: Path, prompts: dict[str, str]) -> dict[str, dict]:
    """For each kind of draft, its prompt's ids and the target's logits table; the "model" kind gets the
    draft model's table too. Prompts are read with the target's tokenizer."""
    tokenizer = models.load(str(target)).tokenizer
    out: dict[str, dict] = {}
    for kind, text in prompts.items():
        prompt = tokenizer(text)["input_ids"]
        out[kind] = {"prompt": prompt, "target": logits_table(target, prompt, LENGTH - 1)}
        if kind == "model":
            out[kind]["draft"] = logits_table(draft, prompt, LENGTH - 1)
    return out
