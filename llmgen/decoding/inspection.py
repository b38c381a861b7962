"""`llmgen inspect`: the next-token distribution at each stage of the chain, for one position at a time.

A step reads the model's logits at a position and runs them through `processors.stages`, the very
functions decoding runs (there is no second implementation):

    raw -> [mask] -> penalties -> temperature -> top_k -> top_p -> min_p -> pick

in the order of `--samplers`; the other stages (DRY, top-n-sigma, typical-p, epsilon, eta, XTC,
Mirostat) are listed where the order puts them when they are on, and left out when off.

For each stage it reports the probabilities softmax(stage logits), how many tokens are still
drawable (finite logits), and the entropy in bits. The last stage is what `processors.distribution`
samples from (greedy: the argmax of it). The token picked there, with `sampling.pick`, is
appended and the next step reads the next position.

Tokens forced with `--continue` count as generated tokens for the penalties, as they would if the
model had written them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.history import History
from llmgen.decoding.processors import RowView, TokenTables, stages
from llmgen.decoding.sampling import pick
from llmgen.errors import UsageError
from llmgen.loading.engines.base import SequenceCache


@dataclass(frozen=True)
class StageView:
    name: str  # "raw", "penalties", "temperature", "top_k", "top_p", "min_p"
    on: bool  # False: the stage is off (its "off" value, or a warper in greedy mode) and changed nothing
    logits: Tensor  # [vocab], float32, the stage's logits (-inf for cut tokens)
    probs: Tensor  # [vocab], softmax of them
    kept: int  # tokens with finite logits
    entropy: float  # bits


@dataclass(frozen=True)
class StepView:
    position: int  # index in the whole sequence (prompt, forced, generated) of the token being chosen
    stages: list[StageView]
    chosen: int

    def cut_at(self, token: int) -> str | None:
        """The stage that cut `token` (its probability became 0), or None if it survived."""
        for stage in self.stages:
            if stage.logits[token] == -math.inf:
                return stage.name
        return None


ALWAYS_SHOWN = ("raw", "mask", "penalties", "temperature", "top_k", "top_p", "min_p")


def view_stages(logits: Tensor, counts: Tensor | None, config: DecodingConfig,
                context: RowView | None = None) -> list[StageView]:
    """logits [vocab] -> one view per stage of `processors.stages` (the stages beyond HF's: when on)."""
    out = []
    contexts = None if context is None else [context]
    for stage in stages(logits[None], None if counts is None else counts[None], config, None, contexts):
        if not stage.on and stage.name not in ALWAYS_SHOWN:
            continue
        row = stage.logits[0]
        probs = row.softmax(dim=-1)
        drawable = probs > 0
        entropy = max(0.0, float(-(probs[drawable] * probs[drawable].log2()).sum()))
        out.append(StageView(stage.name, stage.on, row, probs, int(torch.isfinite(row).sum()), entropy))
    return out


def check_room(prompt_len: int, forced: int, steps: int, context_length: int) -> None:
    needed = prompt_len + forced + steps
    if needed > context_length:
        raise UsageError(f"--steps {steps}: the prompt ({prompt_len} tokens) and --continue ({forced}) leave "
                         f"{max(0, context_length - prompt_len - forced)} of the model's {context_length} "
                         "positions")


@torch.inference_mode()
def inspect_steps(lm: SequenceCache, prompt_ids: Sequence[int], forced: Sequence[int], config: DecodingConfig,
                  generator: torch.Generator, steps: int, eos_token_ids: frozenset[int] = frozenset(),
                  tables: TokenTables | None = None) -> Iterator[StepView]:
    """Up to `steps` views, after the prompt and the forced tokens; stops after an end-of-sequence token
    unless `config.ignore_eos`. `tables`: the tokenizer's tables for the token controls and DRY."""
    # a forced token's surprise is taken as tau: mu unchanged
    history = History(list(prompt_ids), config, tables, generated=list(forced),
                      surprises=[config.mirostat_tau] * len(forced) if config.runs("mirostat") else [])
    logits = lm.forward(history.tokens)[0]  # [vocab]
    for _ in range(steps):
        counts = history.counts(logits.shape[-1], logits.device)
        views = view_stages(logits, None if counts is None else counts[0], config, history)
        token = int(pick(views[-1].logits[None], config.greedy, [generator])[0])  # the last stage is `process`
        yield StepView(len(history.tokens), views, token)
        history.accept(token, views[-1].logits)
        if token in eos_token_ids and not config.ignore_eos:
            return
        logits = lm.forward([token])[0]
