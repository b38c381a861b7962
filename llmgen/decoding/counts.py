"""Penalty counts for rows: one vectorised function that every decoding path uses.

The penalties (`processors/penalties.py`) read c[r, j] = how often token j occurs in row r's penalty context
(`processors.penalty_context`: the scope 'generated' or 'all', cut to the last `penalty_window`).
They are derived from the tokens on every step and never kept, so a rollback needs no bookkeeping.

A row is (prompt ids, the tokens after it). Who builds which rows:
- plain decoding: one row, the output so far;
- batched decoding: one row per running sequence, each with its own prompt and output;
- beam search: one row per beam;
- speculative decoding: one row per draft position i (0..γ), the output so far *plus the first i
  draft tokens*, as vLLM counts them, so that p and q come from the same chain at every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import penalty_context

Row = tuple[Sequence[int], Sequence[int]]  # (prompt ids, the tokens after the prompt)


def penalty_counts(rows: Sequence[Row], config: DecodingConfig, vocab_size: int,
                   device: torch.device | str = "cpu") -> Tensor | None:
    """Counts [len(rows), vocab] (float32), one scatter for all rows; None when no penalty is on."""
    if not config.uses_penalties:
        return None
    contexts = [penalty_context(prompt, after, config) for prompt, after in rows]
    width = max((len(c) for c in contexts), default=0)
    counts = torch.zeros(len(contexts), vocab_size + 1, dtype=torch.float32, device=device)
    if width:
        # NOTE: short rows are padded with `vocab_size`, a spare column cut off below.
        ids = torch.tensor([[*c, *[vocab_size] * (width - len(c))] for c in contexts], dtype=torch.long, device=device)
        counts.scatter_add_(1, ids.clamp(max=vocab_size), torch.ones(ids.shape, dtype=torch.float32, device=device))
    return counts[:, :vocab_size]


def draft_counts(prompt_ids: Sequence[int], generated: Sequence[int], draft: Sequence[int],
                 config: DecodingConfig, vocab_size: int, device: torch.device | str = "cpu") -> Tensor | None:
    """Counts [γ+1, vocab] for the γ draft positions and the bonus position; None without penalties."""
    rows = [(prompt_ids, [*generated, *draft[:i]]) for i in range(len(draft) + 1)]
    return penalty_counts(rows, config, vocab_size, device)

