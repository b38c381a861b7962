"""One record per stage of the chain: everything the rest of llmgen knows about a stage.

`STAGES` lists the records in the default order. From them come the default and llama.cpp orders,
the stage names and their aliases (`--samplers`), which stages are on for given settings, which are
warpers (off in greedy mode), which truncate, which read a row's history, the chain itself
(`chain.compile_chain` binds each record once per settings) and each stage's flags
(`config.stage_options`; `tests/decoding/test_registry.py` checks docs/samplers.md against them).

Adding a sampler stage: its module in `processors/` (pure over logits and the rows, with its math in
the docstring) and its record here; its settings are fields of `config.DecodingConfig`.

NOTE: this module imports nothing: `config.py` (and through it the CLI, without torch) reads the
records, and the stages' modules read `config.py`. A record names its function (`apply`); the chain
imports the stage's module when it binds the stage (`chain.compile_chain`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A sampler stage. It is on when any of its `switches` differs from its off value.

    `apply` names a function of the stage's module in `processors/`: with `setting`, the stage is
    `function(logits, config.<setting>)`; without, `function(config)` returns the stage for those
    settings (`chain.Step`). Either way it is bound once per chain (`chain.compile_chain`).
    """

    name: str
    apply: str  # "module.function" in decoding/processors/
    switches: Mapping[str, Any]  # config field -> its off value
    help: str
    setting: str | None = None  # the one config field `apply` takes beside the logits
    aliases: tuple[str, ...] = ()  # llama.cpp's spellings, accepted by --samplers
    params: tuple[str, ...] = ()  # the other config fields it reads
    warper: bool = False  # reads only the values, never which token holds them; off in greedy mode
    truncates: bool = False  # gives some tokens -inf (the chain may then run the warpers on the rest only)
    reads_history: bool = False  # reads each row's tokens (or Mirostat's surprises), not just the counts
    reads_counts: bool = False  # reads the penalty counts; off when the caller has none
    llamacpp: float | None = None  # its place in llama.cpp's default chain; None: not in it
    below_vocab: str | None = None  # an int switch that is off at or above the vocabulary size (top-k)
    chance: str | None = None  # a config field: the stage applies with this probability (an exact mixture)

    def on(self, config: Any, vocab: int | None = None) -> bool:
        """Whether the settings (a `DecodingConfig`) turn the stage on, before the greedy rule."""
        if self.below_vocab is not None and vocab is not None and getattr(config, self.below_vocab) >= vocab:
            return False
        return any(getattr(config, name) != off for name, off in self.switches.items())

    def runs(self, config: Any, vocab: int | None = None) -> bool:
        """`on`, and not a warper in greedy mode (a warper cannot change the argmax)."""
        return self.on(config, vocab) and not (self.warper and config.greedy)


# The default order: HF `generate()`'s for the stages HF has (penalties, temperature, top-k, top-p,
# min-p), each other stage where llama.cpp puts it relative to them; epsilon and eta where HF puts them.
STAGES: tuple[Stage, ...] = (
    Stage("penalties", "penalties.stage", {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0},
          "repetition (HF/CTRL), frequency and presence (OpenAI), over the penalty scope's counts",
          params=("penalty_scope", "penalty_window"), reads_counts=True, llamacpp=1),
    Stage("dry", "dry.stage", {"dry_multiplier": 0.0}, "DRY: penalise the token that would extend a repetition",
          params=("dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers"),
          reads_history=True, llamacpp=2),
    Stage("top_n_sigma", "truncation.apply_top_n_sigma", {"top_n_sigma": 0.0}, "keep logits >= max - N * std",
          aliases=("top-n-sigma",), setting="top_n_sigma", warper=True, truncates=True, llamacpp=3),
    Stage("temperature", "temperature.stage", {"temperature": 1.0, "dynatemp_range": 0.0},
          "logits / T, or a dynamic T from the entropy", aliases=("temp",), params=("dynatemp_exp",), warper=True,
          llamacpp=9),
    Stage("top_k", "truncation.apply_top_k", {"top_k": 0}, "keep the K most likely tokens", aliases=("top-k",),
          setting="top_k", warper=True, truncates=True, llamacpp=4, below_vocab="top_k"),
    Stage("typical_p", "truncation.apply_typical_p", {"typical_p": 1.0},
          "keep the tokens closest to the entropy until their mass reaches P", aliases=("typ_p", "typical"),
          setting="typical_p", warper=True, truncates=True, llamacpp=5),
    Stage("top_p", "truncation.apply_top_p", {"top_p": 1.0}, "keep the smallest set whose mass reaches P",
          aliases=("top-p",), setting="top_p", warper=True, truncates=True, llamacpp=6),
    Stage("min_p", "truncation.apply_min_p", {"min_p": 0.0}, "drop p < P * max p", aliases=("min-p",),
          setting="min_p", warper=True, truncates=True, llamacpp=7),
    Stage("epsilon", "truncation.apply_epsilon", {"epsilon_cutoff": 0.0}, "drop p < E",
          setting="epsilon_cutoff", warper=True, truncates=True),
    Stage("eta", "truncation.apply_eta", {"eta_cutoff": 0.0}, "drop p < min(E, sqrt(E) * exp(-H))",
          setting="eta_cutoff", warper=True, truncates=True),
    Stage("xtc", "xtc.xtc_cut", {"xtc_probability": 0.0},
          "with probability P, remove the top choices above the threshold but the least likely",
          setting="xtc_threshold", params=("xtc_threshold",), warper=True, llamacpp=8, chance="xtc_probability"),
    Stage("mirostat", "mirostat.stage", {"mirostat": 0}, "Mirostat v2: keep the surprise near tau",
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
