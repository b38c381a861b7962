"""One record per stage of the chain: everything the rest of llmgen knows about a stage.

`STAGES` lists the records in the default order. From them come the default and llama.cpp orders,
the stage names and their aliases (`--samplers`), which stages are on for given settings, which are
warpers (off in greedy mode), which truncate, which read a row's history, the chain itself
(`chain.compile_chain` binds each record once per settings) and each stage's flags (`options`;
`tests/decoding/test_registry.py` checks docs/samplers.md against them).

Adding a sampler stage: its module in `processors/` (pure over logits and the rows, with its math in
the docstring) and its record here; its settings are fields of `config.DecodingConfig`.

NOTE: this module imports no torch: `config.py` and the CLI read the records. Each record's `bind`
imports the stage's module when a chain is compiled, and returns the stage for those settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from llmgen.decoding.config import DecodingConfig
    from llmgen.decoding.processors.context import RowView

# One stage, bound to its settings: (logits [rows, vocab], penalty counts [rows, vocab] or None,
# one view of each row's history or None) -> logits [rows, vocab]. It never mutates its input.
Step = Callable[["Tensor", "Tensor | None", "Sequence[RowView] | None"], "Tensor"]


@dataclass(frozen=True)
class Stage:
    """A sampler stage. It is on when any of its `switches` differs from its off value."""

    name: str
    bind: Callable[[DecodingConfig], Step]  # the stage for these settings; called once per chain
    switches: Mapping[str, Any]  # config field -> its off value
    help: str
    aliases: tuple[str, ...] = ()  # llama.cpp's spellings, accepted by --samplers
    params: tuple[str, ...] = ()  # the other config fields it reads
    warper: bool = False  # reads only the values, never which token holds them; off in greedy mode
    truncates: bool = False  # gives some tokens -inf (the chain may then run the warpers on the rest only)
    reads_history: bool = False  # reads each row's tokens (or Mirostat's surprises), not just the counts
    reads_counts: bool = False  # reads the penalty counts; off when the caller has none
    llamacpp: float | None = None  # its place in llama.cpp's default chain; None: not in it
    below_vocab: str | None = None  # an int switch that is off at or above the vocabulary size (top-k)
    chance: Callable[[DecodingConfig], float] | None = None  # applied with this probability: an exact mixture

    def on(self, config: DecodingConfig, vocab: int | None = None) -> bool:
        """Whether the settings turn the stage on (before the greedy rule)."""
        if self.below_vocab is not None and vocab is not None and getattr(config, self.below_vocab) >= vocab:
            return False
        return any(getattr(config, name) != off for name, off in self.switches.items())

    def runs(self, config: DecodingConfig, vocab: int | None = None) -> bool:
        """`on`, and not a warper in greedy mode (a warper cannot change the argmax)."""
        return self.on(config, vocab) and not (self.warper and config.greedy)


def _penalties(config: DecodingConfig) -> Step:
    from llmgen.decoding.processors.penalties import apply_penalties

    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        assert counts is not None  # `reads_counts`: the chain skips the stage without counts
        return apply_penalties(logits, counts, config)

    return step


def _dry(config: DecodingConfig) -> Step:
    from llmgen.decoding.processors.dry import apply_dry

    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        rows = need_rows(rows, "dry")
        if any(r.tables is None for r in rows) and config.dry_sequence_breakers:
            from llmgen.errors import UsageError

            raise UsageError("DRY's sequence breakers need the tokenizer's tables (processors.tables.build_tables)")
        return apply_dry(logits, [r.tokens for r in rows], config, [r.tables.dry_breakers if r.tables else {} for r in rows])

    return step


def _mirostat(config: DecodingConfig) -> Step:
    from llmgen.decoding.processors.mirostat import apply_mirostat, mirostat_mu

    def step(logits: Tensor, counts: Tensor | None, rows: Sequence[RowView] | None) -> Tensor:
        return apply_mirostat(logits, [mirostat_mu(r.surprises, config) for r in need_rows(rows, "mirostat")])

    return step


def _temperature(config: DecodingConfig) -> Step:
    from llmgen.decoding.processors.temperature import apply_dynamic_temperature

    t, spread, exponent = config.temperature, config.dynatemp_range, config.dynatemp_exp
    return lambda logits, counts, rows: apply_dynamic_temperature(logits, t, spread, exponent)


def _xtc(config: DecodingConfig) -> Step:
    from llmgen.decoding.processors.xtc import xtc_cut

    threshold = config.xtc_threshold
    return lambda logits, counts, rows: xtc_cut(logits, threshold)


def _truncation(function: str, setting: str) -> Callable[[DecodingConfig], Step]:
    """A stage of `truncation.py` with one setting: apply_<function>(logits, config.<setting>)."""

    def bind(config: DecodingConfig) -> Step:
        from llmgen.decoding.processors import truncation

        apply, value = getattr(truncation, f"apply_{function}"), getattr(config, setting)
        return lambda logits, counts, rows: apply(logits, value)

    return bind


def need_rows(rows: Sequence[RowView] | None, name: str) -> Sequence[RowView]:
    if rows is None:
        from llmgen.errors import UsageError

        raise UsageError(f"the {name} stage needs each row's history (decoding.history.History)")
    return rows


# The default order: HF `generate()`'s for the stages HF has (penalties, temperature, top-k, top-p,
# min-p), each other stage where llama.cpp puts it relative to them; epsilon and eta where HF puts them.
STAGES: tuple[Stage, ...] = (
    Stage("penalties", _penalties, {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0},
          "repetition (HF/CTRL), frequency and presence (OpenAI), over the penalty scope's counts",
          params=("penalty_scope", "penalty_window"), reads_counts=True, llamacpp=1),
    Stage("dry", _dry, {"dry_multiplier": 0.0}, "DRY: penalise the token that would extend a repetition",
          params=("dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers"),
          reads_history=True, llamacpp=2),
    Stage("top_n_sigma", _truncation("top_n_sigma", "top_n_sigma"), {"top_n_sigma": 0.0},
          "keep logits >= max - N * std", aliases=("top-n-sigma",), warper=True, truncates=True, llamacpp=3),
    Stage("temperature", _temperature, {"temperature": 1.0, "dynatemp_range": 0.0},
          "logits / T, or a dynamic T from the entropy", aliases=("temp",), params=("dynatemp_exp",), warper=True,
          llamacpp=9),
    Stage("top_k", _truncation("top_k", "top_k"), {"top_k": 0}, "keep the K most likely tokens", aliases=("top-k",),
          warper=True, truncates=True, llamacpp=4, below_vocab="top_k"),
    Stage("typical_p", _truncation("typical_p", "typical_p"), {"typical_p": 1.0},
          "keep the tokens closest to the entropy until their mass reaches P", aliases=("typ_p", "typical"),
          warper=True, truncates=True, llamacpp=5),
    Stage("top_p", _truncation("top_p", "top_p"), {"top_p": 1.0}, "keep the smallest set whose mass reaches P",
          aliases=("top-p",), warper=True, truncates=True, llamacpp=6),
    Stage("min_p", _truncation("min_p", "min_p"), {"min_p": 0.0}, "drop p < P * max p", aliases=("min-p",),
          warper=True, truncates=True, llamacpp=7),
    Stage("epsilon", _truncation("epsilon", "epsilon_cutoff"), {"epsilon_cutoff": 0.0}, "drop p < E",
          warper=True, truncates=True),
    Stage("eta", _truncation("eta", "eta_cutoff"), {"eta_cutoff": 0.0}, "drop p < min(E, sqrt(E) * exp(-H))",
          warper=True, truncates=True),
    Stage("xtc", _xtc, {"xtc_probability": 0.0},
          "with probability P, remove the top choices above the threshold but the least likely",
          params=("xtc_threshold",), warper=True, llamacpp=8, chance=lambda config: config.xtc_probability),
    Stage("mirostat", _mirostat, {"mirostat": 0}, "Mirostat v2: keep the surprise near tau",
          aliases=("mirostat_v2",), params=("mirostat_tau", "mirostat_eta"), warper=True, truncates=True,
          reads_history=True, llamacpp=10),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
STAGE_NAMES = tuple(BY_NAME)
DEFAULT_ORDER = STAGE_NAMES
# llama.cpp's default chain (common/common.h), temperature last; epsilon and eta are not in it.
LLAMACPP_ORDER = tuple(s.name for s in sorted((s for s in STAGES if s.llamacpp is not None), key=lambda s: s.llamacpp or 0))
NAMED_ORDERS = {"default": DEFAULT_ORDER, "llama.cpp": LLAMACPP_ORDER}
# Stages that change the distribution's shape, not the argmax (or are random): off in greedy mode.
WARPERS = frozenset(s.name for s in STAGES if s.warper)
TRUNCATIONS = frozenset(s.name for s in STAGES if s.truncates)
# llama.cpp's spellings of stage names, accepted too.
STAGE_ALIASES = {alias: s.name for s in STAGES for alias in s.aliases}


def options(stage: Stage) -> list[tuple[str, Any, str]]:
    """The stage's settings as command-line flags, its switches first: (flag, default, help). What the
    CLI's option groups, the inspect panel and the docs table can be derived from."""
    from llmgen.decoding.config import ALIASES, DEFAULTS, FIELDS, LIST_FIELDS  # NOTE: config.py reads this module

    flag = {field: alias for alias, field in ALIASES.items() if field in LIST_FIELDS}  # a list's singular flag
    return [(f"--{flag.get(name, name).replace('_', '-')}", getattr(DEFAULTS, name), FIELDS[name].metadata["help"])
            for name in (*stage.switches, *stage.params)]

