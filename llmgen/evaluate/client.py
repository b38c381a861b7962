"""N completions from an OpenAI-compatible server (`/v1/completions`), as the audit sends them.

Each request asks for `max_tokens` k with logprobs off, and carries the claimed settings the user
gave, spelled as OpenAI (temperature, top_p, frequency_penalty, presence_penalty, seed), as the
common extensions (top_k and min_p: vLLM, llama.cpp, ollama; repetition_penalty: vLLM; repeat_penalty
and repeat_last_n: llama.cpp), and every other sampler setting as llama-server names it where it has
it (typical_p, top_n_sigma, dry_*, xtc_*, mirostat*, dynatemp_*, samplers), else as vLLM (bad_words,
allowed_token_ids, min_tokens, ...) or llmgen (`llmgen serve` reads them all). Nothing else is sent:
whatever the server does with the rest is what the audit looks at.

A completion is mapped back to token ids with the audit's own tokenizer (`Completion`): the
server's `token_ids` when it gives them (vLLM's `return_token_ids`), else the text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from llmgen.decoding.config import MASK_FIELDS, REQUEST_NAMES, DecodingConfig
from llmgen.decoding.processors.registry import STAGES
from llmgen.errors import LlmgenError, UsageError


class ServerError(LlmgenError):
    """The server cannot be reached, or does not answer as an OpenAI-compatible one does. Exit 2, like a
    usage error: the audit's exit 1 means only "rejected"."""

    exit_code = 2


# DecodingConfig field -> the request fields that carry it: every setting of every stage (from the stage
# records) and of the mask, under llama-server's name where it has the setting (`config.REQUEST_NAMES`), which
# `llmgen serve` reads too; the penalties' common spellings beside (vLLM's repetition_penalty, llama-server's
# repeat_penalty and repeat_last_n).
FIELDS: dict[str, tuple[str, ...]] = {
    name: (REQUEST_NAMES.get(name, name),)
    for name in (*(f for s in STAGES for f in (*s.switches, *s.params)), *MASK_FIELDS, "samplers")}
FIELDS["repetition_penalty"] = ("repetition_penalty", "repeat_penalty")
FIELDS["penalty_window"] = ("penalty_window", "repeat_last_n")
LLAMA_STAGE_NAMES = {"typical_p": "typ_p"}  # llama-server's `samplers` spelling, where it is not llmgen's


def request_fields(claimed: dict[str, Any], config: DecodingConfig) -> dict[str, Any]:
    """The sampling fields of a request: the options the user claimed (`claimed`: flags given), as resolved."""
    out: dict[str, Any] = {}
    for name in claimed:
        if name == "greedy":
            out["temperature"] = 0.0
        for key in FIELDS.get(name, ()):
            out[key] = _wire(key, getattr(config, name))
    return out


def _wire(key: str, value: Any) -> Any:
    """A setting as a request spells it: logit_bias as {"id": bias}; repeat_last_n -1 for the whole scope
    (its 0 counts nothing); llama-server's stage names in `samplers`; tuples as lists."""
    if key == "logit_bias":
        return {str(token): bias for token, bias in value}
    if key == "repeat_last_n":
        return value or -1
    if key == "samplers":
        return [LLAMA_STAGE_NAMES.get(stage, stage) for stage in value]
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    token_ids: list[int] | None  # when the server gives them
    prompt_tokens: int | None  # usage, when given
    completion_tokens: int | None


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as err:
        detail = err.read()[:200].decode(errors="replace").replace("\n", " ")
        raise ServerError(f"{url} answered HTTP {err.code}: {detail or err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ServerError(f"cannot reach {url}: {reason}") from None
    try:
        payload = json.loads(raw)
    except ValueError:
        raise ServerError(f"{url} did not answer JSON: is it an OpenAI-compatible server?") from None
    if not isinstance(payload, dict):
        raise ServerError(f"{url} did not answer a JSON object: is it an OpenAI-compatible server?")
    return payload


def completions_url(base: str) -> str:
    base = base.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, not {base!r}")
    if base.endswith("/completions"):
        return base
    return base + ("/completions" if base.endswith("/v1") else "/v1/completions")


def complete(url: str, model: str | None, prompt: str, max_tokens: int, fields: dict[str, Any],
             timeout: float = 60.0) -> Completion:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "n": 1, "stream": False, **fields}
    if model:
        body["model"] = model
    payload = _post(url, body, timeout)
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
            or not isinstance(choices[0].get("text"), str):
        raise ServerError(f"{url} answered without choices[0].text: is it an OpenAI-compatible completions "
                          "endpoint?")
    choice = choices[0]
    raw_usage = payload.get("usage")
    usage = raw_usage if isinstance(raw_usage, dict) else {}
    ids = choice.get("token_ids")
    return Completion(choice["text"], choice.get("finish_reason"),
                      [int(i) for i in ids] if isinstance(ids, list) else None,
                      usage.get("prompt_tokens"), usage.get("completion_tokens"))
