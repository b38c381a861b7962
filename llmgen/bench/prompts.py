"""Prompt sets for the benchmark: the built-in ones, and the user's own files.

Built-in sets (10 prompts each, rewrite 16; shipped in `llmgen/bench/prompts/NAME.jsonl`):
- grounded: rewrite, correct, summarize or extract from a passage given in the prompt. The answer
  copies much of its input, which is where an n-gram (prompt lookup) draft shines.
- correct: fix the spelling mistakes (two per text) in a given paragraph; the answer is nearly a copy.
- proofread: the same task on paragraphs of 110-130 words, long enough that the corrected text fills
  the benchmark's 128-token budget (the answers to `correct` end after 40-85 tokens).
- open: stories, plans and explanations; little of the answer is in the prompt.
- code: complete or edit a given function.
- rewrite: 16 rewriting jobs of one and the same document (4 tasks: spelling, formal, email, concise; each
  asked 4 ways, interleaved): the
  repeated similar requests of an agent or a batch job, where a draft that remembers earlier requests
  and their outputs (`suffix`) drafts from them.

A user file is either JSON Lines, one object per line with a "prompt" string (multi-line prompts need
this), or plain text with one prompt per line. Blank lines are skipped in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from llmgen.errors import UsageError

BUILTIN_SETS = ("grounded", "correct", "proofread", "open", "code", "rewrite")


@dataclass(frozen=True)
class PromptSet:
    name: str
    prompts: tuple[str, ...]

    def __getitem__(self, index: int) -> str:
        """Prompt `index`, cycling when a benchmark has more runs than the set has prompts."""
        return self.prompts[index % len(self.prompts)]


def parse(text: str, source: str) -> tuple[str, ...]:
    """Prompts from a file's text: JSONL when the first non-blank line is a JSON object, else lines."""
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise UsageError(f"{source}: no prompts in the file")
    if not lines[0][1].lstrip().startswith("{"):
        return tuple(line for _, line in lines)
    prompts = []
    for number, line in lines:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{source}:{number}: not a JSON object: {err.msg}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise UsageError(f'{source}:{number}: each JSON line needs a non-empty "prompt" string')
        prompts.append(item["prompt"])
    return tuple(prompts)


def load(ref: str) -> PromptSet:
    """A built-in set by name, or a file of prompts."""
    if ref in BUILTIN_SETS:
        text = resources.files("llmgen.bench").joinpath("prompts", f"{ref}.jsonl").read_text(encoding="utf-8")
        return PromptSet(ref, parse(text, f"built-in prompt set {ref!r}"))
    path = Path(ref).expanduser()
    if not path.is_file():
        raise UsageError(f"--prompts: {ref!r} is neither a built-in set ({', '.join(BUILTIN_SETS)}) "
                         "nor a readable file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts: cannot read {path}: {err}") from None
    return PromptSet(path.stem, parse(text, str(path)))
