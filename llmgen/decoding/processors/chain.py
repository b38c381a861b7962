"""The chain: the mask, then the stages of `config.samplers`, compiled once per settings.

`compile_chain(config, vocab)` binds each stage's record (`registry.py`) to the settings once, and
keeps only the stages that run; `process` and `stages` run the same compiled chain, so what
`llmgen inspect` shows is what decoding does. Each stage is pure over (logits [rows, vocab], the
penalty counts, one `RowView` per row); none mutates its input.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import Context, RowView, Step
from llmgen.decoding.processors.controls import apply_mask, apply_token_controls
from llmgen.decoding.processors.mirostat import surprise
from llmgen.decoding.processors.registry import BY_NAME, Stage
from llmgen.decoding.processors.truncation import NEG_INF
from llmgen.decoding.processors.xtc import mixture

COMPACT_BELOW = 1 / 16  # of the vocabulary


@dataclass(frozen=True)
class StageLogits:
    """The logits after one step of the chain. `on` is False when the step left them as they were."""

    name: str  # "raw", ["mask"], then the names of config.samplers
    logits: Tensor  # [rows, vocab], float32
    on: bool


@dataclass(frozen=True)
class Link:
    """One stage of a compiled chain: its record, the stage bound to the settings (None: off), and
    whether the chain may compact the logits after it (it truncates, and only warpers follow it)."""

    stage: Stage
    step: Step | None
    compact: bool


@dataclass(frozen=True)
class Chain:
    """The chain for one setting and vocabulary size (`compile_chain`)."""

    config: DecodingConfig
    links: tuple[Link, ...]

    def __call__(self, logits: Tensor, counts: Tensor | None = None, allowed: Tensor | None = None,
                 rows: Sequence[RowView] | None = None, record: list[StageLogits] | None = None) -> Tensor:
        """[rows, vocab] -> [rows, vocab]. `counts` [rows, vocab] are the penalty counts; `allowed`
        [rows, vocab] bool a constraint's mask; `rows` one history view per row, read by the token
        controls, DRY and Mirostat. Each stage is appended to `record` when given (`stages`)."""
        logits = logits.to(torch.float32)
        if record is not None:
            record.append(StageLogits("raw", logits, True))
        if allowed is not None or self.config.uses_token_controls:
            logits = apply_token_controls(apply_mask(logits, allowed), rows, self.config)
            if record is not None:
                record.append(StageLogits("mask", logits, True))
        vocab = logits.shape[-1]
        branches: list[tuple[float, Tensor]] = [(1.0, logits)]
        index: Tensor | None = None  # [rows, m]: the tokens the compact logits stand for, once compacted
        for link in self.links:
            step, stage = link.step, link.stage
            on = step is not None and not (stage.reads_counts and counts is None)
            if step is not None and on and stage.chance is not None:  # applied with probability p: the exact mixture (`xtc.py`)
                p = getattr(self.config, stage.chance)
                branches = [(w * b, branch) for w, branch in branches
                            for b, branch in ((1 - p, branch), (p, step(branch, counts, rows))) if w * b > 0]
            elif step is not None and on:
                branches = [(w, step(branch, counts, rows)) for w, branch in branches]
            if record is not None:
                record.append(StageLogits(stage.name, mixture(branches), on))
            elif on and index is None and link.compact:
                branches, index = _compact(branches)
        out = mixture(branches)
        if index is not None:
            out = torch.full((out.shape[0], vocab), NEG_INF, dtype=out.dtype, device=out.device).scatter(-1, index, out)
        return out


@functools.lru_cache(maxsize=256)
def compile_chain(config: DecodingConfig, vocab: int) -> Chain:
    """The stages of `config.samplers`, each bound once; kept per settings and vocabulary size."""
    order = [BY_NAME[name] for name in config.samplers]
    return Chain(config, tuple(
        Link(stage, bind(stage, config) if stage.runs(config, vocab) else None,
             stage.truncates and all(later.warper for later in order[at + 1:]))
        for at, stage in enumerate(order)))


def bind(stage: Stage, config: DecodingConfig) -> Step:
    """The record's function, from its module, bound to the settings (`registry.Stage.apply`)."""
    module, name = stage.apply.rsplit(".", 1)
    function = getattr(importlib.import_module(f"llmgen.decoding.processors.{module}"), name)
    if stage.setting is None:
        step: Step = function(config)
        return step
    value = getattr(config, stage.setting)
    return lambda logits, counts, rows: function(logits, value)


def _compact(branches: list[tuple[float, Tensor]]) -> tuple[list[tuple[float, Tensor]], Tensor | None]:
    """After a truncation that left few tokens drawable, the branches on those tokens only.

    NOTE: the stages after it see the same values in another order; each of them decides on values
    alone, so only float rounding of their sums (a different order of the same terms) can differ.
    """
    first = branches[0][1]
    drawable = int(torch.isfinite(first).sum(dim=-1).max())
    if drawable > first.shape[-1] * COMPACT_BELOW or drawable == 0:
        return branches, None
    index = torch.topk(first, drawable, dim=-1).indices  # [rows, m]
    return [(w, branch.gather(-1, index)) for w, branch in branches], index


def stages(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
           contexts: Sequence[RowView] | None = None) -> list[StageLogits]:
    """The chain step by step: raw -> [mask] -> the stages of `config.samplers`.

    The "mask" stage is listed only with a constraint or a token control. A stage that is off (its
    off value, or a warper in greedy mode) is listed with `on = False` and its input unchanged. After
    XTC (0 < P < 1) the chain runs on two branches, and each stage shows their mixture (`xtc.py`).
    The last stage is `process`.
    """
    out: list[StageLogits] = []
    compile_chain(config, logits.shape[-1])(logits, counts, allowed, contexts, out)
    return out


def process(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
            contexts: Sequence[RowView] | None = None) -> Tensor:
    """The whole chain (the last of `stages`): [rows, vocab] -> [rows, vocab]."""
    return compile_chain(config, logits.shape[-1])(logits, counts, allowed, contexts)


def process_chained(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None,
                    contexts: Sequence[RowView] | None, draft: Sequence[int]) -> Tensor:
    """`process` for the rows of a speculative round: row i follows the first i draft tokens, and
    `contexts[i].generated` includes them. With Mirostat, row i's mu needs the surprises of those
    draft tokens under rows 0..i-1, so the rows run one after another; otherwise all at once."""
    chain = compile_chain(config, logits.shape[-1])
    if not config.runs("mirostat"):
        return chain(logits, counts, allowed, contexts)
    assert contexts is not None  # Mirostat reads the history
    rows: list[Tensor] = []
    extra: list[float] = []
    for i, ctx in enumerate(contexts):
        ahead = Context(ctx.prompt, ctx.generated, (*ctx.surprises, *extra), ctx.tables)
        row = chain(logits[i:i + 1], None if counts is None else counts[i:i + 1],
                    None if allowed is None else allowed[i:i + 1], [ahead])
        rows.append(row)
        if i < len(draft):
            extra.append(surprise(row[0], draft[i]))
    return torch.cat(rows)


def distribution(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
                 contexts: Sequence[RowView] | None = None) -> Tensor:
    """The distribution a token is drawn from, [rows, vocab]. Greedy is the one-hot of the argmax."""
    return distribution_of(process(logits, counts, config, allowed, contexts), config)


def distribution_of(processed: Tensor, config: DecodingConfig) -> Tensor:
    """`distribution` from logits that went through `process` already."""
    if config.greedy:
        return torch.nn.functional.one_hot(processed.argmax(dim=-1), processed.shape[-1]).to(torch.float32)
    return processed.softmax(dim=-1)
