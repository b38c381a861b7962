"""Timings and counts of one generated sequence."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timer:
    """Marks the start, the first token and each later token; derives prefill and decode speed."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    tokens: int = 0

    def token(self, count: int = 1) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.tokens += count

    @property
    def prefill_seconds(self) -> float:
        return (self.first or time.perf_counter()) - self.start

    @property
    def decode_seconds(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return self.last - self.first

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: the tokens after the first, over the time after the first."""
        seconds = self.decode_seconds
        return (self.tokens - 1) / seconds if seconds > 0 and self.tokens > 1 else 0.0

    def as_dict(self, prompt_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "generated_tokens": self.tokens,
            "prefill_seconds": round(self.prefill_seconds, 6),
            "decode_seconds": round(self.decode_seconds, 6),
            "tokens_per_second": round(self.tokens_per_second, 3),
        }
