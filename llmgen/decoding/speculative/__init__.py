"""Exact speculative decoding: a draft proposes, the target verifies in one forward, caches roll back.

- `verify.py`     the pure verifier (p, q, residual, bonus)
- `proposers/`   one module per draft: the draft model, the n-gram (prompt lookup) draft, the suffix
                  draft and its cache file, the cross-tokenizer draft
- `gamma.py`      fixed γ and `auto` (γ = 0 included), over the engine's verify cost (`loading/verify_cost.py`)
- `loop.py`       propose -> verify -> rollback, as a token iterator
- `stats.py`      acceptance counts and the expected tokens per forward
- `runner.py`     wiring from loaded models; `speculate()` for one whole sequence

The penalty counts at draft positions are `decoding/counts.py`'s, shared with every other path.
"""

from llmgen.decoding.speculative.gamma import AdaptiveGamma, FixedGamma, expected_tokens
from llmgen.decoding.speculative.loop import Round, speculative_tokens
from llmgen.decoding.speculative.proposers import (
    DraftModelProposer,
    NgramProposer,
    Proposal,
    SuffixProposer,
    SuffixStore,
    prompt_lookup,
)
from llmgen.decoding.speculative.runner import NGRAM, SUFFIX, check_compatible, make_source, parse_gamma, speculate
from llmgen.decoding.speculative.stats import SpeculativeStats
from llmgen.decoding.speculative.verify import Verdict, verify

__all__ = ["NGRAM", "SUFFIX", "AdaptiveGamma", "DraftModelProposer", "FixedGamma", "NgramProposer", "Proposal",
           "Round", "SpeculativeStats", "SuffixProposer", "SuffixStore", "Verdict", "check_compatible",
           "expected_tokens", "make_source", "parse_gamma", "prompt_lookup", "speculate", "speculative_tokens",
           "verify"]
