"""How fast can a prompt-lookup draft be on given prompts? Replays of the greedy output, no model.

Greedy speculative output equals plain greedy output, so once a plain run's output `out` is known, the
rounds of any copying draft can be replayed without the model: a round at output position g proposes
tokens from the context C = prompt + out[:g], the target accepts the longest prefix equal to out[g:],
and adds one token of its own. A round that proposes d tokens costs one target forward over k = d + 1
tokens. With v(k), the measured cost of that forward relative to a one-token forward, the speedup over
plain decoding is

    speedup = len(out) / Σ_rounds v(k_round)

Two drafts are replayed:
- `lookup γ`: llmgen's n-gram draft (`proposers.prompt_lookup`, the same n-gram sizes) with a fixed γ.
- `copy oracle`: each round proposes the longest span of C that equals the start of out[g:] (up to
  `cap` tokens), and nothing when no span does, so no proposal is ever rejected. Every draft that
  copies from its context (prompt lookup with any n-gram rule, any match choice and any rule for γ)
  proposes a span of C, and none can accept more per round; with v(k) growing in k, none can be much
  faster. It is the ceiling that the model's own output puts on prompt lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmgen.decoding.speculative.proposers import prompt_lookup
from llmgen.loading.engines.prefix import common_prefix

# (context, the output still to come) -> draft tokens
Draft = Callable[[list[int], list[int]], list[int]]


def replay(prompt: Sequence[int], out: Sequence[int], draft: Draft) -> list[int]:
    """The forward sizes k of the rounds that produce `out` after `prompt` with `draft`."""
    prompt, out = list(prompt), list(out)
    sizes: list[int] = []
    g = 0
    while g < len(out):
        proposed = draft(prompt + out[:g], out[g:])[:max(0, len(out) - g - 1)]
        accepted = common_prefix(proposed, out[g:])
        sizes.append(len(proposed) + 1)
        g += accepted + 1
    return sizes


def lookup_draft(gamma: int, ngram_max: int, ngram_min: int) -> Draft:
    return lambda context, _future: prompt_lookup(context, gamma, ngram_max, ngram_min)


def copy_oracle(cap: int) -> Draft:
    def draft(context: list[int], future: list[int]) -> list[int]:
        best = 0
        first = future[0] if future else None
        for start, token in enumerate(context):
            if token == first:
                best = max(best, common_prefix(context[start:start + cap], future))
        return future[:best]
    return draft


@dataclass(frozen=True)
class Bound:
    label: str
    tokens: int
    rounds: int
    cost: float  # Σ v(k) over the rounds, in one-token forwards
    per_run: tuple[float, ...]  # each run's speedup

    @property
    def median_speedup(self) -> float:
        ordered = sorted(self.per_run)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.rounds if self.rounds else 0.0

    @property
    def speedup(self) -> float:
        return self.tokens / self.cost if self.cost else 0.0


def bound(label: str, runs: Sequence[tuple[Sequence[int], Sequence[int]]], draft: Draft,
          v: Callable[[int], float]) -> Bound:
    """Replay `draft` over (prompt, output) pairs; one Bound over all of them."""
    tokens = rounds = 0
    cost = 0.0
    per_run = []
    for prompt, out in runs:
        sizes = replay(prompt, out, draft)
        run_cost = sum(v(k) for k in sizes)
        tokens += len(out)
        rounds += len(sizes)
        cost += run_cost
        per_run.append(len(out) / run_cost if run_cost else 0.0)
    return Bound(label, tokens, rounds, cost, tuple(per_run))
