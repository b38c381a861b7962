"""Proposers: where the γ draft tokens of a round come from, one module per draft.

- `base`: the `Proposer` protocol, `Proposal`, and `ForcedFirst` (a grammar's forced tokens first);
- `model`: `DraftModelProposer`, a smaller model sampling from q = the target's chain over its logits;
- `cross`: `CrossTokenizerProposer`, a draft model with another vocabulary; its text is re-read in target
  tokens (one-hot, q = None);
- `ngram`: `NgramProposer`, prompt lookup (one-hot, q = None);
- `suffix`: `SuffixProposer` over a `SuffixStore` shared across requests (one-hot), and `lookup_cache`,
  its `--draft-cache` file.
"""

from llmgen.decoding.speculative.proposers.base import ForcedFirst, Proposal, Proposer
from llmgen.decoding.speculative.proposers.cross import CrossTokenizerProposer
from llmgen.decoding.speculative.proposers.model import DraftModelProposer
from llmgen.decoding.speculative.proposers.ngram import NgramProposer, prompt_lookup
from llmgen.decoding.speculative.proposers.suffix import SuffixProposer, SuffixStore

__all__ = ["CrossTokenizerProposer", "DraftModelProposer", "ForcedFirst", "NgramProposer", "Proposal", "Proposer",
           "SuffixProposer", "SuffixStore",
           "prompt_lookup"]
