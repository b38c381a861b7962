"""One row of batched decoding (`batch.py`): a sequence with its own settings, random stream, stop rules,
matcher and history, as the batch loop and its admission (`admission.py`) see it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.history import History
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.processors import TokenTables
from llmgen.decoding.sequence import SequenceState


@dataclass(eq=False)
class Row:
    """One sequence to decode. `key` identifies it to the caller (the sample or prompt index)."""

    key: int
    prompt_ids: list[int]
    config: DecodingConfig
    generator: torch.Generator
    state: SequenceState | None = field(default=None, repr=False)  # created when the row is admitted
    logprobs: LogprobSpec | None = None  # report each token's logprobs (`logprobs.py`)
    matcher: Matcher | None = None  # the row's own constraint state (`constraints.py`)
    tables: TokenTables | None = None  # the tokenizer's tables for the token controls and DRY (`processors.tables`)
    history: History | None = field(default=None, repr=False)  # created when the row is admitted

    @property
    def running(self) -> SequenceState:
        """The stop rules of a row that was admitted."""
        assert self.state is not None, "the row has not been admitted"
        return self.state
    cancelled: bool = False  # set (from any thread) to drop the row at the next step; it ends "cancelled"
    cached: int = 0  # prompt tokens copied from cells that held them (the prefix cache), not prefilled
    reuse: bool = True  # may start from copied cells (llama-server's cache_prompt: false turns it off)
