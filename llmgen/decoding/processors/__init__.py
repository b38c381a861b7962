"""The processor chain: pure logits transforms over (logits [rows, vocab], context). None mutates its input.

The chain runs the mask first, then the stages in the order `config.samplers` gives (`--samplers`):

    mask -> penalties -> dry -> top_n_sigma -> temperature -> top_k -> typical_p -> top_p -> min_p
         -> epsilon -> eta -> xtc -> mirostat -> pick                                   (the default)

The default keeps HF `generate()`'s order for the stages HF has (penalties, temperature, top-k,
top-p, min-p: greedy, sampling and penalties still equal HF's), with each other stage where
llama.cpp places it relative to them; epsilon and eta, which llama.cpp lacks, where HF puts them.
The named order `llama.cpp` is llama.cpp's default chain, temperature last:

    mask -> penalties -> dry -> top_n_sigma -> top_k -> typical_p -> top_p -> min_p -> xtc
         -> temperature -> mirostat -> pick

One concept per module, with its math in the docstring:
- `controls`: the mask stage (a constraint's mask, allowed ids, bad words, min tokens, the reasoning
  budget, logit bias), before the penalties, as vLLM applies them;
- `penalties`: repetition, frequency, presence, from counts over the penalty scope (`context`);
- `dry`: DRY's repetition penalty; `temperature`: fixed or dynamic; `truncation`: top-k, top-p,
  min-p, typical-p, epsilon, eta, top-n-sigma; `xtc`: XTC, as an exact mixture; `mirostat`: v2.

Greedy (temperature 0, `DecodingConfig.greedy`) runs the mask, the penalties and DRY, and none of
the warpers: they cannot change the argmax (XTC and Mirostat, random, are off too).

Every stage reads the context as it stands (`Context`: the tokens, Mirostat's surprises); nothing
here keeps state that would have to be rolled back after a rejected speculative round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from llmgen.decoding.config import WARPERS, DecodingConfig
from llmgen.decoding.processors.context import Context, TokenTables, penalty_context, token_counts
from llmgen.decoding.processors.controls import apply_mask, apply_token_controls
from llmgen.decoding.processors.dry import apply_dry
from llmgen.decoding.processors.mirostat import apply_mirostat, mirostat_mu, surprise
from llmgen.decoding.processors.penalties import apply_frequency_presence, apply_penalties, apply_repetition_penalty
from llmgen.decoding.processors.temperature import apply_dynamic_temperature, apply_temperature
from llmgen.decoding.processors.truncation import (
    NEG_INF,
    apply_epsilon,
    apply_eta,
    apply_min_p,
    apply_top_k,
    apply_top_n_sigma,
    apply_top_p,
    apply_typical_p,
    top_p_sorted,
)
from llmgen.decoding.processors.xtc import mixture, xtc_cut
from llmgen.errors import UsageError

__all__ = ["NEG_INF", "STAGES", "Context", "Stage", "TokenTables", "apply_dry", "apply_dynamic_temperature",
           "apply_epsilon", "apply_eta", "apply_frequency_presence", "apply_mask", "apply_min_p", "apply_mirostat",
           "apply_penalties", "apply_repetition_penalty", "apply_temperature", "apply_token_controls", "apply_top_k",
           "apply_top_n_sigma", "apply_top_p", "apply_typical_p", "distribution", "distribution_of",
           "mirostat_mu", "penalty_context", "process", "process_chained", "stages", "surprise", "token_counts",
           "top_p_sorted", "xtc_cut"]

# The stages of the default order (the mask, first, is not one of them: it cannot move).
STAGES = DecodingConfig().samplers
# The same stages see only the values of the logits, never which token holds them: after a truncation,
# the chain may run them on the few tokens still drawable (`_run`).
VALUE_ONLY = WARPERS
TRUNCATIONS = frozenset({"top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta", "mirostat"})
COMPACT_BELOW = 1 / 16  # of the vocabulary


@dataclass(frozen=True)
class Stage:
    """The logits after one step of the chain. `on` is False when the step left them as they were."""

    name: str  # "raw", ["mask"], then the names of config.samplers
    logits: Tensor  # [rows, vocab], float32
    on: bool


def _apply(name: str, logits: Tensor, counts: Tensor | None, config: DecodingConfig,
           contexts: Sequence[Context] | None) -> Tensor:
    """One stage on logits [rows, vocab]."""
    if name == "penalties":
        assert counts is not None  # `_active`: the penalties run only with counts
        return apply_penalties(logits, counts, config)
    if name == "dry":
        rows = _need(contexts, name)
        if any(c.tables is None for c in rows) and config.dry_sequence_breakers:
            raise UsageError("DRY's sequence breakers need the tokenizer's tables (processors.tables.build_tables)")
        return apply_dry(logits, [c.tokens for c in rows], config,
                         [c.tables.dry_breakers if c.tables else {} for c in rows])
    if name == "top_n_sigma":
        return apply_top_n_sigma(logits, config.top_n_sigma)
    if name == "temperature":
        return apply_dynamic_temperature(logits, config.temperature, config.dynatemp_range, config.dynatemp_exp)
    if name == "top_k":
        return apply_top_k(logits, config.top_k)
    if name == "typical_p":
        return apply_typical_p(logits, config.typical_p)
    if name == "top_p":
        return apply_top_p(logits, config.top_p)
    if name == "min_p":
        return apply_min_p(logits, config.min_p)
    if name == "epsilon":
        return apply_epsilon(logits, config.epsilon_cutoff)
    if name == "eta":
        return apply_eta(logits, config.eta_cutoff)
    if name == "mirostat":
        return apply_mirostat(logits, [mirostat_mu(c.surprises, config) for c in _need(contexts, name)])
    raise AssertionError(name)


def _need(contexts: Sequence[Context] | None, name: str) -> Sequence[Context]:
    if contexts is None:
        raise UsageError(f"the {name} stage needs each row's context (processors.Context)")
    return contexts


def _active(name: str, config: DecodingConfig, counts: Tensor | None, vocab: int) -> bool:
    if config.greedy and name in WARPERS:
        return False
    if name == "penalties":
        return counts is not None and config.uses_penalties
    if name == "top_k":
        return 0 < config.top_k < vocab
    return config.stages_on[name]


def stages(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
           contexts: Sequence[Context] | None = None) -> list[Stage]:
    """The chain step by step: raw -> [mask] -> the stages of `config.samplers`.

    `counts` [rows, vocab] are the penalty counts; `allowed` [rows, vocab] bool a constraint's mask;
    `contexts` one `Context` per row, needed by the token controls, DRY and Mirostat. The "mask" stage
    is listed only with a constraint or a token control.

    `process` is the last stage, and `llmgen inspect` shows every stage, so that what it shows is
    what decoding does. A stage that is off (its "off" value, or a warper in greedy mode) is listed
    with `on = False` and its input unchanged. After XTC (0 < P < 1) the chain runs on two branches,
    and each stage shows their mixture (`xtc.py`).
    """
    out: list[Stage] = []
    _run(logits, counts, config, allowed, contexts, out)
    return out


def _run(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None,
         contexts: Sequence[Context] | None, record: list[Stage] | None) -> Tensor:
    """The chain; each stage is appended to `record` when given (`stages`), else only the end is mixed."""
    logits = logits.to(torch.float32)
    if record is not None:
        record.append(Stage("raw", logits, True))
    if allowed is not None or config.uses_token_controls:
        logits = apply_token_controls(apply_mask(logits, allowed), contexts, config)
        if record is not None:
            record.append(Stage("mask", logits, True))
    vocab = logits.shape[-1]
    branches: list[tuple[float, Tensor]] = [(1.0, logits)]
    index: Tensor | None = None  # [rows, m]: the tokens the compact logits stand for, once compacted
    order = config.samplers
    for at, name in enumerate(order):
        on = _active(name, config, counts, vocab)
        if on and name == "xtc":
            p = config.xtc_probability
            branches = [(w * b, branch) for w, branch in branches
                        for b, branch in ((1 - p, branch), (p, xtc_cut(branch, config.xtc_threshold))) if w * b > 0]
        elif on:
            branches = [(w, _apply(name, branch, counts, config, contexts)) for w, branch in branches]
        if record is not None:
            record.append(Stage(name, mixture(branches), on))
        elif on and index is None and name in TRUNCATIONS and all(n in VALUE_ONLY for n in order[at + 1:]):
            branches, index = _compact(branches)
    out = mixture(branches)
    if index is not None:
        out = torch.full((out.shape[0], vocab), NEG_INF, dtype=out.dtype, device=out.device).scatter(-1, index, out)
    return out


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


def process(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
            contexts: Sequence[Context] | None = None) -> Tensor:
    """The whole chain (the last of `stages`): [rows, vocab] -> [rows, vocab]."""
    return _run(logits, counts, config, allowed, contexts, None)


def process_chained(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None,
                    contexts: Sequence[Context] | None, draft: Sequence[int]) -> Tensor:
    """`process` for the rows of a speculative round: row i follows the first i draft tokens, and
    `contexts[i].generated` includes them. With Mirostat, row i's mu needs the surprises of those
    draft tokens under rows 0..i-1, so the rows run one after another; otherwise all at once."""
    if not (config.mirostat == 2 and not config.greedy):
        return process(logits, counts, config, allowed, contexts)
    assert contexts is not None  # Mirostat reads the context
    rows: list[Tensor] = []
    extra: list[float] = []
    for i, ctx in enumerate(contexts):
        ctx = replace(ctx, surprises=(*ctx.surprises, *extra))
        row = process(logits[i:i + 1], None if counts is None else counts[i:i + 1], config,
                      None if allowed is None else allowed[i:i + 1], [ctx])
        rows.append(row)
        if i < len(draft):
            extra.append(surprise(row[0], draft[i]))
    return torch.cat(rows)


def distribution(logits: Tensor, counts: Tensor | None, config: DecodingConfig, allowed: Tensor | None = None,
                 contexts: Sequence[Context] | None = None) -> Tensor:
    """The distribution a token is drawn from, [rows, vocab]. Greedy is the one-hot of the argmax."""
    return distribution_of(process(logits, counts, config, allowed, contexts), config)


def distribution_of(processed: Tensor, config: DecodingConfig) -> Tensor:
    """`distribution` from logits that went through `process` already."""
    if config.greedy:
        return torch.nn.functional.one_hot(processed.argmax(dim=-1), processed.shape[-1]).to(torch.float32)
    return processed.softmax(dim=-1)
