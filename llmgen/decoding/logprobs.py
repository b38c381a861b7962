"""Log-probabilities of the picked tokens, computed where the pick happens.

For each generated token t at a position with raw logits z and processed logits z' (after
`processors.process`), the entry is

    logprob      = log_softmax(s)[t]
    top_logprobs = the N largest entries of log_softmax(s), descending

with s = z in mode "raw" (the model's own distribution, before any processor: what OpenAI and vLLM
report by default) or s = z' in mode "processed" (the distribution the token was drawn from, after
penalties, temperature and truncation; cut tokens have -inf). In greedy mode the warpers are off,
so "processed" is the penalised distribution whose argmax was taken.

Plain, batched and speculative decoding all call `token_logprobs` on the same (z, z') they pick
from, so the numbers agree across them. Beam search reports the log-probs its scores add up
(`beam.py`). The entries travel with the tokens (`sequence.Token`) and become JSON with
OpenAI's field names in `to_json`.

NOTE: strict JSON has no -inf, so `top_logprobs` in JSON lists only tokens that could be drawn:
fewer than N when truncation kept fewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from llmgen.errors import UsageError

MAX_TOP = 20
Mode = Literal["raw", "processed"]
MODES = ("raw", "processed")


@dataclass(frozen=True)
class LogprobSpec:
    """What to report: `top` alternatives per token (0..20) under the `mode` distribution."""

    top: int = 0
    mode: Mode = "raw"

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or not 0 <= self.top <= MAX_TOP:
            raise UsageError(f"--logprobs must be an integer from 0 to {MAX_TOP}, got {self.top!r}")
        if self.mode not in MODES:
            raise UsageError(f"--logprobs-mode must be 'raw' or 'processed', got {self.mode!r}")


class TokenLogprob(NamedTuple):
    id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob), descending


def token_logprobs(raw: Tensor, processed: Tensor | None, tokens: Tensor | Sequence[int],
                   spec: LogprobSpec) -> list[TokenLogprob]:
    """One entry per row: raw and processed logits [rows, vocab], the picked tokens [rows]."""
    source = raw if spec.mode == "raw" or processed is None else processed
    return entries(source.to(torch.float32).log_softmax(dim=-1), tokens, spec.top)


def entries(log_probs: Tensor, tokens: Tensor | Sequence[int], top: int) -> list[TokenLogprob]:
    """Read the entries off log-probabilities [rows, vocab] as they are (beam search's need not sum to 1)."""
    index = torch.as_tensor(tokens, dtype=torch.long, device=log_probs.device).reshape(-1, 1)  # [rows, 1]
    chosen = log_probs.gather(-1, index)  # [rows, 1]
    if top:
        values, ids = torch.topk(log_probs, top, dim=-1)  # [rows, N], descending
        # NOTE: one device-to-host transfer per step.
        host = torch.cat([chosen.double(), values.double(), ids.double()], dim=-1).tolist()
    else:
        host = chosen.double().tolist()
    ids_list = index[:, 0].tolist()
    n = top
    return [TokenLogprob(ids_list[r], row[0], tuple(zip((int(i) for i in row[1 + n:]), row[1:1 + n])))
            for r, row in enumerate(host)]


def to_json(entries: Sequence[TokenLogprob], tokenizer: Any) -> list[dict[str, Any]]:
    """OpenAI's shape: [{"id", "token", "logprob", "top_logprobs": [{"id", "token", "logprob"}]}]."""
    names: dict[int, str] = {}

    def name(token: int) -> str:
        if token not in names:
            names[token] = tokenizer.decode([token])
        return names[token]

    return [{"id": e.id, "token": name(e.id), "logprob": _finite(e.logprob),
             "top_logprobs": [{"id": i, "token": name(i), "logprob": lp} for i, lp in e.top if lp != -math.inf]}
            for e in entries]


def _finite(value: float) -> float | None:
    return None if value == -math.inf else value
