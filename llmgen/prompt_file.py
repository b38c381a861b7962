"""Prompt files for `generate --input`: one prompt per line, or JSON Lines.

The format is decided once, by the first non-blank line: if it starts with `{`, every line is a JSON
object; otherwise every line is a prompt as it stands (a trailing `\\r` is dropped).

A JSON line holds `"prompt"` (a non-empty string) and optionally:
- `"id"`: any string or number, copied to the output row;
- `"system"`: the system message (chat mode);
- decoding keys, spelled as in presets (`"max_new_tokens"`, `"temperature"`, `"greedy"`, ...): they
  override the command line for this row. A row may not ask for `n` > 1 or beam search.

Line i (from 0) is prompt `index` i, so output rows line up with input lines, blank lines included.
A line that cannot be used (invalid JSON, no prompt, an unknown key, a bad value) becomes a `Job`
with `error` set; the other lines are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from llmgen.decoding import constraints
from llmgen.decoding.batch import Row, row_generator
from llmgen.decoding.config import DecodingConfig, parse_keys
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import encode_prompt
from llmgen.errors import LlmgenError, UsageError
from llmgen.loading.hfutil import first_line

ROW_KEYS = ("prompt", "id", "system")


@dataclass(frozen=True)
class Job:
    index: int
    prompt: str = ""
    id: Any = None
    system: str | None = None
    config: DecodingConfig | None = None
    own_seed: bool = False  # the row sets "seed" itself: it is then sampled exactly as `generate --seed`
    error: str | None = None


def split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def parse(text: str, base: DecodingConfig) -> list[Job]:
    """Every line of a prompt file as a Job, in order."""
    lines = split_lines(text)
    first = next((line.lstrip() for line in lines if line.strip()), "")
    if first.startswith("{"):
        return [parse_json_line(i, line, base) for i, line in enumerate(lines)]
    return [Job(i, line, config=base) if line.strip() else Job(i, error="the prompt is empty")
            for i, line in enumerate(lines)]


def parse_json_line(index: int, line: str, base: DecodingConfig) -> Job:
    if not line.strip():
        return Job(index, error="the line is empty")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return Job(index, error=f"invalid JSON: {err.msg} (column {err.colno})")
    if not isinstance(obj, dict):
        return Job(index, error=f"a JSON line must be an object, not {type(obj).__name__}")
    row_id = obj.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, (str, int, float))):
        return Job(index, error=f"invalid id: {row_id!r} must be a string or a number")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        return Job(index, id=row_id, error='no "prompt" string')
    if not prompt.strip():
        return Job(index, id=row_id, error="the prompt is empty")
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        return Job(index, id=row_id, error=f"invalid system: {system!r} must be a string")
    try:
        config = row_config(base, {k: v for k, v in obj.items() if k not in ROW_KEYS})
    except LlmgenError as err:
        return Job(index, id=row_id, error=str(err))
    return Job(index, prompt, row_id, system, config, own_seed="seed" in obj)


def row_config(base: DecodingConfig, keys: dict[str, Any]) -> DecodingConfig:
    """The command line's settings with one row's decoding keys on top."""
    changes = parse_keys(keys)
    config = base.replace(**changes) if changes else base
    if config.n > 1 or config.num_beams > 1:
        raise LlmgenError("a row of --input cannot ask for n > 1 or beam search")
    return config


OnError = Callable[[int, str], None]  # (prompt index, the one-line reason)


def job_rows(jobs: Iterable[Job], model: Any, chat: bool | None, system: str | None,
             logprobs: LogprobSpec | None, on_error: OnError) -> Iterator[Row]:
    """The rows to decode, one per job, read lazily: the prompt encoded (chat template or raw), the row's
    random stream, its matcher. A job that cannot become a row (its line was bad, its prompt does not
    encode, its constraint does not compile) goes to `on_error` instead; the others are unaffected.

    Seeds: a row with its own "seed" key is sampled exactly as `generate --seed` would; the others get
    row i's stream of the command line's seed (`batch.row_generator`). `model` is a `LoadedModel`, or
    the `ModelInfo` of one whose weights live elsewhere."""
    for job in jobs:
        if job.error is not None or job.config is None:  # a job without an error has its settings
            on_error(job.index, job.error or "no settings")
            continue
        config = job.config
        try:
            ids = encode_prompt(model, job.prompt, chat, job.system or system, config.template_kwargs())
        except Exception as err:  # noqa: BLE001 - a tokenizer's failure on one row must not stop the others
            on_error(job.index, first_line(err))
            continue
        seed = config.seed
        generator = (make_generator(seed, model.device) if job.own_seed
                     else row_generator(seed, job.index, model.device))
        try:
            matcher = constraints.new_matcher(config, model)
        except UsageError as err:  # a row's own bad --regex or --schema fails that row only
            on_error(job.index, str(err))
            continue
        yield Row(job.index, ids, config, generator, logprobs=logprobs, matcher=matcher)
