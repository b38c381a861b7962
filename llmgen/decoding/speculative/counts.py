"""Penalty counts at the draft positions of a speculative round.

The penalties (processors.py) are a function of the tokens already in the penalty scope. Inside a
round, the token at draft position i (0-based) follows the output so far *and the first i draft
tokens*, so its counts must include them (as vLLM does). Row i is therefore

    counts_i = token_counts(penalty_context(prompt, generated + draft[:i]))

which also keeps the scope ('generated' or 'all') and the window (the last N tokens) exact. The draft
and the target use the same rows, so p and q come from the same processor chain.

The stages that read the tokens themselves (token controls, DRY, Mirostat) get the same rows as
`Context`s (`draft_contexts`): row i's generated tokens are generated + draft[:i].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import Context, TokenTables, penalty_context, token_counts


def position_counts(prompt_ids: Sequence[int], generated: Sequence[int], draft_prefix: Sequence[int],
                    config: DecodingConfig, vocab_size: int, device: torch.device | str = "cpu") -> Tensor | None:
    """Counts [1, vocab] for the position after `generated + draft_prefix`; None without penalties."""
    if not config.uses_penalties:
        return None
    context = penalty_context(prompt_ids, [*generated, *draft_prefix], config)
    return token_counts(context, vocab_size, device)[None]


def draft_counts(prompt_ids: Sequence[int], generated: Sequence[int], draft: Sequence[int],
                 config: DecodingConfig, vocab_size: int, device: torch.device | str = "cpu") -> Tensor | None:
    """Counts [γ+1, vocab] for the γ draft positions and the bonus position; None without penalties."""
    if not config.uses_penalties:
        return None
    rows = [position_counts(prompt_ids, generated, draft[:i], config, vocab_size, device)
            for i in range(len(draft) + 1)]
    return torch.cat(rows)  # type: ignore[arg-type]


def draft_contexts(prompt_ids: Sequence[int], generated: Sequence[int], draft: Sequence[int],
                   surprises: Sequence[float], config: DecodingConfig,
                   tables: TokenTables | None) -> list[Context] | None:
    """Contexts for the γ draft positions and the bonus position; None when no stage reads them.
    `surprises` are those of `generated` (Mirostat); the draft tokens' come from the rows themselves
    (`processors.process_chained`)."""
    if not config.needs_context:
        return None
    return [Context(prompt_ids, (*generated, *draft[:i]), tuple(surprises), tables) for i in range(len(draft) + 1)]
