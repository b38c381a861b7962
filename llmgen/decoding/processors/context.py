"""What a stage that reads a row's history may read (`RowView`): its tokens, Mirostat's surprises, the tables.

A stage is a pure function of (logits, rows). The chain updates nothing here: decoding loops pass each
row's `decoding.history.History` (which owns the row's tokens), and a speculative round passes
frozen `Context`s of the rows ahead (history + the first i draft tokens), so a rejected round needs
no rollback.

- `prompt`, `generated`: the row's tokens. In a speculative round, row i's `generated` includes the
  first i draft tokens (as the penalty counts do, `decoding/counts.py`).
- `surprises`: -log2 p(t) of each generated token t under the distribution it was drawn from (the
  chain's last stage). Mirostat's mu is a function of them (`mirostat.py`).
- `tables`: what the tokenizer knows (`TokenTables`): the stop ids, the bad words' token ids, DRY's
  sequence breakers, the thinking tags. Built once per run from the config and the tokenizer.

The penalty counts c[j] (`token_counts` over `penalty_context`) are computed by the callers, who batch them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError


@dataclass(frozen=True)
class TokenTables:
    """Token ids the context-dependent stages need, from the tokenizer (`tables.build_tables`)."""

    vocab_size: int
    stop_ids: frozenset[int] = frozenset()  # end-of-sequence ids and --stop-token-id
    bad_words: tuple[tuple[int, ...], ...] = ()  # each word's token ids (with and without a leading space)
    # DRY: head token -> the tails (token ids) that complete a sequence breaker with it; () = the head alone
    dry_breakers: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    think_open: tuple[int, ...] = ()  # "<think>" as token ids; () = no thinking tags
    think_close: tuple[int, ...] = ()  # "</think>"


class RowView(Protocol):
    """What the stages read of one row: a `Context`, or a `decoding.history.History`."""

    @property
    def prompt(self) -> Sequence[int]: ...

    @property
    def generated(self) -> Sequence[int]: ...

    @property
    def surprises(self) -> Sequence[float]: ...

    @property
    def tables(self) -> TokenTables | None: ...

    @property
    def tokens(self) -> list[int]: ...


@dataclass(frozen=True)
class Context:
    """One row's history, frozen (a `RowView`). `tokens` = prompt + generated."""

    prompt: Sequence[int]
    generated: Sequence[int]
    surprises: Sequence[float] = ()
    tables: TokenTables | None = None

    @property
    def tokens(self) -> list[int]:
        return [*self.prompt, *self.generated]


# One stage, bound to its settings (`chain.compile_chain`): (logits [rows, vocab], the penalty counts
# [rows, vocab] or None, one view of each row's history or None) -> logits [rows, vocab]. It never
# mutates its input.
Step = Callable[[Tensor, Tensor | None, "Sequence[RowView] | None"], Tensor]


def need_rows(rows: Sequence[RowView] | None, name: str) -> Sequence[RowView]:
    if rows is None:
        raise UsageError(f"the {name} stage needs each row's history (decoding.history.History)")
    return rows


def penalty_context(prompt_ids: Sequence[int], generated_ids: Sequence[int], config: DecodingConfig) -> list[int]:
    """The tokens the penalties count: the scope ('generated' or 'all'), cut to the last `penalty_window`."""
    tokens = list(generated_ids) if config.penalty_scope == "generated" else [*prompt_ids, *generated_ids]
    if config.penalty_window:
        tokens = tokens[-config.penalty_window:]
    return tokens


def token_counts(tokens: Sequence[int], vocab_size: int, device: torch.device | str = "cpu") -> Tensor:
    """c[j] = how many times token j occurs in `tokens`. Shape [vocab]."""
    if not tokens:
        return torch.zeros(vocab_size, device=device)
    ids = torch.as_tensor(list(tokens), dtype=torch.long, device=device)
    return torch.bincount(ids, minlength=vocab_size)[:vocab_size].to(torch.float32)
