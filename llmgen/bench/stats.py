"""The statistics of a benchmark: summaries over runs, the interleaved schedule, text quality, memory.

- `summarize(values)`: median, min and max of the measured runs (the median is what tables show:
  one slow run on a shared machine moves it least).
- `schedule(configs, runs, warmup)`: the order runs happen in. Every configuration is warmed up
  first, then the measured runs go round-robin, A B C A B C ..., so that a machine that gets slower or
  faster over time (thermal limits, other processes) affects every configuration alike. Run i of every
  configuration reads prompt i of the set, so configurations are compared on the same prompts.
- Quality of generated text, over token ids:
    distinct-n = (number of different n-grams) / (number of n-grams)
    repeated n-gram rate = 1 - distinct-n, with n = 3 by default: the share of 3-grams that already
      occurred earlier in the same text. A greedy loop ("Day 1: Lisbon... Day 2: Lisbon...") drives
      distinct-n down and the repeated rate up.
- `PeakMemory`: the peak resident memory while a block runs (a sampling thread on CPU; the CUDA
  allocator's peak on a GPU), and `peak_rss_bytes()` for the whole process so far.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Summary:
    """Median, min and max of one measure over the measured runs (n of them)."""

    median: float
    min: float
    max: float
    n: int

    def as_json(self, digits: int = 4) -> dict[str, Any]:
        return {"median": round(self.median, digits), "min": round(self.min, digits),
                "max": round(self.max, digits), "n": self.n}


def summarize(values: Sequence[float | None]) -> Summary | None:
    """None when there is nothing to summarize (a measure that does not apply to the configuration)."""
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return None
    return Summary(statistics.median(clean), min(clean), max(clean), len(clean))


@dataclass(frozen=True)
class Slot:
    """One run in the schedule: which configuration, which run index (the prompt), measured or warm-up."""

    config: int
    run: int
    warmup: bool


def schedule(configs: int, runs: int, warmup: int = 1) -> list[Slot]:
    """Warm-up runs of every configuration, then `runs` rounds of A B C ... (one run of each per round).

    Warm-up round w uses run index w as well, so warm-ups read the first prompts of the set.
    """
    if configs < 1 or runs < 1 or warmup < 0:
        raise ValueError("schedule needs configs >= 1, runs >= 1 and warmup >= 0")
    slots = [Slot(c, w, True) for w in range(warmup) for c in range(configs)]
    slots += [Slot(c, r, False) for r in range(runs) for c in range(configs)]
    return slots


def ngrams(tokens: Sequence[T], n: int) -> list[tuple[T, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[Any], n: int) -> float | None:
    """Different n-grams over all n-grams; None when the text has fewer than n tokens."""
    grams = ngrams(tokens, n)
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def repeated_ngram_rate(tokens: Sequence[Any], n: int = 3) -> float | None:
    """The share of n-grams that already occurred earlier in the text (1 - distinct-n)."""
    value = distinct_n(tokens, n)
    return None if value is None else 1.0 - value


def quality(tokens: Sequence[Any]) -> dict[str, float | None]:
    return {"distinct_2": distinct_n(tokens, 2), "distinct_3": distinct_n(tokens, 3),
            "repeated_3gram_rate": repeated_ngram_rate(tokens, 3)}


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the process peak is the best we have
        return peak_rss_bytes()


class PeakMemory:
    """Peak memory while the `with` block runs, in bytes (`.peak` after the block).

    On CUDA, the allocator's peak of allocated memory on that device. On CPU, the resident set size,
    sampled every `interval` seconds by a thread (plus at the start and the end).
    NOTE: the sampler holds the GIL for a few microseconds per sample; every configuration pays the same.
    """

    def __init__(self, device: Any = "cpu", interval: float = 0.01) -> None:
        self.cuda = getattr(device, "type", str(device)).startswith("cuda")
        self.device = device
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.cuda:
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())
