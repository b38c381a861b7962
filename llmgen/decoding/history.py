"""One row's history: what the chain reads of a row, all of it derived from the row's tokens.

A `History` holds the prompt, the generated tokens, the tokenizer's tables (`processors.tables`), the
row's constraint matcher (`constraints.py`) and Mirostat's surprises: s = -log2 q(t) of each generated
token t under the distribution q it was drawn from (the chain's last stage), kept only when Mirostat
runs. Mirostat's mu is a function of them (`processors/mirostat.py`).

- `counts()`: the penalty counts, derived from the tokens at every call (`counts.py`), never kept;
- `accept(token, processed)`: the one place a token joins a row: the matcher takes it, and its
  surprise is computed from the logits it was drawn from;
- `truncate(length)`: rollback: the tokens, their surprises and the matcher go back to `length`;
- `ahead(draft)`: a frozen view of the row followed by draft tokens (a speculative round's rows).

Plain, batched and speculative decoding, the draft model and the exact distribution (`evaluate/`)
all keep one `History` per row; the chain takes them (`process_rows`) as `processors.RowView`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.constraints import Matcher
from llmgen.decoding.counts import penalty_counts
from llmgen.decoding.processors import Context, TokenTables, process, surprise


@dataclass(eq=False)
class History:
    """One row: prompt + generated tokens, and what the chain reads beside them."""

    prompt: Sequence[int]
    config: DecodingConfig
    tables: TokenTables | None = None
    matcher: Matcher | None = None  # the row's own; `accept` advances it, `truncate` rolls it back
    generated: list[int] = field(default_factory=list)
    surprises: list[float] = field(default_factory=list)  # one per generated token while Mirostat runs

    def __post_init__(self) -> None:
        self.keeps_surprises = self.config.runs("mirostat")

    @property
    def tokens(self) -> list[int]:
        return [*self.prompt, *self.generated]

    def counts(self, vocab: int, device: torch.device | str = "cpu") -> Tensor | None:
        """The penalty counts [1, vocab] of the row as it stands; None when no penalty is on."""
        return penalty_counts([(self.prompt, self.generated)], self.config, vocab, device)

    def accept(self, token: int, processed: Tensor | None = None, surprise_bits: float | None = None) -> None:
        """Append `token`, drawn from softmax(`processed`) ([vocab]); the matcher takes it. With Mirostat,
        its surprise is `surprise_bits` when given, else computed from `processed`."""
        if self.keeps_surprises:
            if surprise_bits is None:
                assert processed is not None, "Mirostat needs the logits the token was drawn from"
                surprise_bits = surprise(processed, token)
            self.surprises.append(surprise_bits)
        if self.matcher is not None:
            self.matcher.advance(token)
        self.generated.append(token)

    def truncate(self, length: int) -> None:
        """Roll back to the first `length` generated tokens."""
        if self.matcher is not None and len(self.generated) > length:
            self.matcher.rollback(len(self.generated) - length)
        del self.generated[length:]
        del self.surprises[length:]

    def ahead(self, draft: Sequence[int] = ()) -> Context:
        """A frozen view of the row followed by `draft` (the surprises are those of the generated tokens)."""
        return Context(self.prompt, (*self.generated, *draft), tuple(self.surprises), self.tables)


def process_rows(logits: Tensor, histories: Sequence[History], config: DecodingConfig) -> Tensor:
    """The chain on rows with equal settings: logits [rows, vocab] -> [rows, vocab]. Each row's counts,
    constraint mask and history come from its `History`."""
    counts = penalty_counts([(h.prompt, h.generated) for h in histories], config, logits.shape[-1], logits.device)
    allowed = None  # NOTE: rows of one config are all constrained or none
    if histories[0].matcher is not None:
        allowed = torch.stack([h.matcher.allowed() for h in histories if h.matcher is not None])  # [rows, vocab]
    return process(logits, counts, config, allowed, histories if config.needs_context else None)
