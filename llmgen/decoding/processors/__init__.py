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

Each stage is one record in `registry.py` (name, aliases, settings and their off values, flags,
help) and one module with its math in the docstring; `chain.py` compiles the records for given
settings once (`compile_chain`) into a list of bound stages. The modules:
- `controls`: the mask stage (a constraint's mask, allowed ids, bad words, min tokens, the reasoning
  budget, logit bias), before the penalties, as vLLM applies them;
- `penalties`: repetition, frequency, presence, from counts over the penalty scope (`context`);
- `dry`: DRY's repetition penalty; `temperature`: fixed or dynamic; `truncation`: top-k, top-p,
  min-p, typical-p, epsilon, eta, top-n-sigma; `xtc`: XTC, as an exact mixture; `mirostat`: v2.

Greedy (temperature 0, `DecodingConfig.greedy`) runs the mask, the penalties and DRY, and none of
the warpers: they cannot change the argmax (XTC and Mirostat, random, are off too).

Every stage reads each row's history as it stands (`RowView`: the tokens, Mirostat's surprises);
nothing here keeps state that would have to be rolled back after a rejected speculative round.

NOTE: this package imports its modules (and torch) on first use of a name, so that `config.py` and
the CLI can read `registry.py` without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmgen.decoding.processors.chain import (
        Chain,
        StageLogits,
        compile_chain,
        distribution,
        distribution_of,
        process,
        process_chained,
        stages,
    )
    from llmgen.decoding.processors.context import Context, RowView, TokenTables, penalty_context, token_counts
    from llmgen.decoding.processors.controls import apply_mask, apply_token_controls
    from llmgen.decoding.processors.dry import apply_dry
    from llmgen.decoding.processors.mirostat import apply_mirostat, mirostat_mu, surprise
    from llmgen.decoding.processors.penalties import apply_frequency_presence, apply_penalties, apply_repetition_penalty
    from llmgen.decoding.processors.registry import STAGES, Stage
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

__all__ = ["NEG_INF", "STAGES", "Chain", "Context", "RowView", "Stage", "StageLogits", "TokenTables", "apply_dry",
           "apply_dynamic_temperature", "apply_epsilon", "apply_eta", "apply_frequency_presence", "apply_mask",
           "apply_min_p", "apply_mirostat", "apply_penalties", "apply_repetition_penalty", "apply_temperature",
           "apply_token_controls", "apply_top_k", "apply_top_n_sigma", "apply_top_p", "apply_typical_p",
           "compile_chain", "distribution", "distribution_of", "mirostat_mu", "mixture", "penalty_context", "process",
           "process_chained", "stages", "surprise", "token_counts", "top_p_sorted", "xtc_cut"]
_MODULES = ("chain", "context", "controls", "dry", "mirostat", "penalties", "registry", "temperature", "truncation",
            "xtc")


def __getattr__(name: str) -> Any:
    """The names above, imported from their modules on first use."""
    if name in __all__:
        for module in _MODULES:
            found = importlib.import_module(f"{__name__}.{module}")
            if hasattr(found, name):
                return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
