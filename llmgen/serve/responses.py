"""OpenAI's response objects, built from llmgen's results: pure functions, no HTTP.

- chat: `chat.completion` (a `message` per choice) and, streamed, `chat.completion.chunk` (a `delta`);
- completions: `text_completion`, streamed or not (a `text` per choice);
- `usage`: prompt tokens (once per prompt, as OpenAI counts them) and every generated token of every
  choice, including a token that completed a stop string; `system_fingerprint`: the engine and a digest
  of the model and the server's base settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from llmgen import __version__
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import SequenceResult

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "cancelled"}


def fingerprint(engine: str, model_ref: str, base: DecodingConfig) -> str:
    """`fp_<engine>_<digest>`: the digest of llmgen's version, the model and the base settings."""
    settings = json.dumps({"version": __version__, "model": model_ref, **dataclasses.asdict(base)}, sort_keys=True)
    return f"fp_llmgen-{engine}_{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def usage(prompt_lengths: Sequence[int], results: Sequence[SequenceResult]) -> dict[str, Any]:
    """OpenAI's usage; `prompt_tokens_details.cached_tokens`: prompt tokens copied from the prefix cache rather
    than prefilled (once per prompt, as the prompt tokens are counted)."""
    prompt = sum(prompt_lengths)
    completion = sum(len(r.token_ids) for r in results)
    cached: dict[tuple[int, ...], int] = {}
    for r in results:
        key = tuple(r.prompt_token_ids)
        cached[key] = max(cached.get(key, 0), int(r.stats.get("cached_tokens", 0)))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(cached.values())}}


def finish_reason(result: SequenceResult) -> str:
    return FINISH.get(result.finish_reason, result.finish_reason)


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """llmgen's logprob entries (`logprobs.to_json`) in the chat shape: {"content": [...]}."""
    if entries is None:
        return None
    return {"content": [{"token": e["token"], "logprob": _number(e["logprob"]), "bytes": _bytes(e["token"]),
                         "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": _bytes(t["token"])}
                                          for t in e["top_logprobs"]]}
                        for e in entries]}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs ({token: logprob}), text_offset."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [_number(e["logprob"]) for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}


def _number(value: float | None) -> float:
    # NOTE: a token drawn from the processed distribution always has a finite raw logprob; -9999 as OpenAI.
    return -9999.0 if value is None else value


def chat_response(ident: str, created: int, model: str, fp: str, results: Sequence[SequenceResult],
                  prompt_lengths: Sequence[int], with_logprobs: bool) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                "logprobs": chat_logprobs(r.logprobs) if with_logprobs else None,
                "finish_reason": finish_reason(r)} for i, r in enumerate(results)]
    return {"id": ident, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fp, "choices": choices, "usage": usage(prompt_lengths, results)}


def completion_response(ident: str, created: int, model: str, fp: str, results: Sequence[SequenceResult],
                        prompt_lengths: Sequence[int], with_logprobs: bool) -> dict[str, Any]:
    choices = [{"index": i, "text": r.text,
                "logprobs": completion_logprobs(r.logprobs) if with_logprobs else None,
                "finish_reason": finish_reason(r)} for i, r in enumerate(results)]
    return {"id": ident, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fp, "choices": choices, "usage": usage(prompt_lengths, results)}


def chat_chunk(ident: str, created: int, model: str, fp: str, index: int, delta: dict[str, str],
               logprobs: dict[str, Any] | None = None, finish: str | None = None,
               include_usage: bool = False) -> dict[str, Any]:
    chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": fp,
             "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
    if include_usage:
        chunk["usage"] = None  # as OpenAI: null on every chunk but the last one
    return chunk


def completion_chunk(ident: str, created: int, model: str, fp: str, index: int, text: str,
                     logprobs: dict[str, Any] | None = None, finish: str | None = None,
                     include_usage: bool = False) -> dict[str, Any]:
    chunk = {"id": ident, "object": "text_completion", "created": created, "model": model,
             "system_fingerprint": fp,
             "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(ident: str, created: int, model: str, fp: str, kind: str, the_usage: dict[str, int]) -> dict[str, Any]:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": ident, "object": obj, "created": created, "model": model, "system_fingerprint": fp,
            "choices": [], "usage": the_usage}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
