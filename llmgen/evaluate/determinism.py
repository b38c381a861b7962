"""The determinism audit (`llmgen audit --determinism URL`): does a server answer a request the same way
alone and beside other requests? vLLM's "needle" test (tests/v1/determinism), pointed at any
OpenAI-compatible server.

For each mode (greedy; seeded sampling at temperature 0.8), each prompt of a set of mixed lengths is sent
alone, one request after another. Then the same prompts are sent again, all at once, together with filler
requests of other lengths, `concurrency` in flight, started a few milliseconds apart (staggered, so that
rows join and leave a running batch at different steps). An answer that differs from its lone answer is
counted, with the first token where it parts from it (the tokens are the server's own, from
`logprobs.tokens`; a server that gives none is compared by text, and the place is a character offset).
Exit 1 when any answer differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgen.evaluate.client import _post

PROMPTS = (
    "The history of the printing press begins",
    "Write a short story about a lighthouse keeper who finds a message in a bottle. The story should",
    "List the planets of the solar system in order from the sun:",
    "def merge_sort(items):",
    "Q: Why is the sky blue?\nA:",
    "Translate to French: The weather is nice today, and we are going to the beach with our friends.",
    "Once upon a time",
    "The three most important things to remember when learning a new language are",
)
FILLERS = ("Hi", "Tell me a joke about computers.", "2+2=", "Describe the water cycle in detail, step by step, "
           "for a class of ten-year-old students who have never heard of evaporation or condensation.")
MODES = {"greedy": {"temperature": 0.0}, "seeded": {"temperature": 0.8, "seed": 1234}}


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: list[str] | None  # the server's tokens (logprobs.tokens), when it gives them


@dataclass
class Difference:
    mode: str
    prompt: int
    at: int  # the first token (or character, with no tokens) where the answers part
    unit: str  # "token" or "character"
    alone: str
    batched: str


@dataclass
class Report:
    url: str
    prompts: int
    concurrency: int
    max_tokens: int
    compared: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "prompts": self.prompts, "concurrency": self.concurrency,
                "max_tokens": self.max_tokens, "compared": self.compared, "differ": len(self.differences),
                "differences": [vars(d) for d in self.differences]}


def ask(url: str, model: str | None, prompt: str, max_tokens: int, mode: dict[str, Any],
        timeout: float) -> Answer:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "logprobs": 1, **mode}
    if model:
        body["model"] = model
    payload = _post(url, body, timeout)
    choice = (payload.get("choices") or [{}])[0]
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    return Answer(str(choice.get("text", "")), [str(t) for t in tokens] if isinstance(tokens, list) else None)


def first_difference(a: Answer, b: Answer) -> tuple[int, str] | None:
    """Where two answers part: (index, "token") over the server's tokens, else (offset, "character")."""
    if a.tokens is not None and b.tokens is not None:
        left: Sequence[str] = a.tokens
        right: Sequence[str] = b.tokens
        unit = "token"
    else:
        left, right, unit = a.text, b.text, "character"
    for i, (x, y) in enumerate(zip(left, right)):
        if x != y:
            return i, unit
    return (min(len(left), len(right)), unit) if len(left) != len(right) else None


def audit(url: str, model: str | None = None, *, prompts: Sequence[str] = PROMPTS, concurrency: int = 16,
          max_tokens: int = 48, stagger: float = 0.01, timeout: float = 300.0,
          progress: Any = None) -> Report:
    """Each prompt alone, then inside `concurrency` concurrent requests, for each mode (module docstring)."""
    report = Report(url, len(prompts), concurrency, max_tokens)
    for name, mode in MODES.items():
        alone = []
        for prompt in prompts:
            alone.append(ask(url, model, prompt, max_tokens, mode, timeout))
            if progress:
                progress()
        batch = list(prompts) + [FILLERS[i % len(FILLERS)] for i in range(max(0, concurrency - len(prompts)))]
        answers: list[Answer | Exception | None] = [None] * len(batch)

        def send(i: int, prompt: str) -> None:
            try:
                # fillers ask for other lengths, so that rows leave the batch at other steps
                tokens = max_tokens if i < len(prompts) else 8 + (i * 13) % max_tokens
                answers[i] = ask(url, model, prompt, tokens, mode, timeout)
            except Exception as err:  # noqa: BLE001  (re-raised below, in the caller's thread)
                answers[i] = err

        threads = []
        for start in range(0, len(batch), concurrency):
            group = range(start, min(start + concurrency, len(batch)))
            for i in group:
                thread = threading.Thread(target=send, args=(i, batch[i]), daemon=True)
                thread.start()
                threads.append(thread)
                time.sleep(stagger * (i % 4))
            for thread in threads:
                thread.join()
        for i, (lone, got) in enumerate(zip(alone, answers)):
            if isinstance(got, Exception):
                raise got
            assert got is not None
            report.compared += 1
            where = first_difference(lone, got)
            if where is not None:
                report.differences.append(Difference(name, i, where[0], where[1], lone.text, got.text))
        if progress:
            progress()
    return report
