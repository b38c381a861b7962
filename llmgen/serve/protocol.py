"""The OpenAI request bodies: checked field by field, then mapped onto a `DecodingConfig`.

Everything here is pure (no model, no HTTP): `chat_request` and `completion_request` check a parsed
JSON body and return what the server needs; `to_config` is THE mapping of request fields to decoding
settings, on top of the server's base settings (llmgen's defaults < `--preset` < the request).

The fields, in four groups (the table in docs/serve.md):
- OpenAI's: model, messages | prompt, max_tokens | max_completion_tokens, temperature, top_p, n, seed,
  stop, frequency_penalty, presence_penalty, logit_bias, logprobs, top_logprobs, response_format,
  stream, stream_options, user (ignored), echo (not streamed), best_of (null or n);
- vLLM's extras (`entrypoints/openai/protocol.py`): top_k (-1 = off), min_p, repetition_penalty,
  min_tokens, ignore_eos, stop_token_ids, bad_words, allowed_token_ids, chat_template_kwargs (chat);
- llama-server's (`tools/server`): typical_p, top_n_sigma, dynatemp_range, dynatemp_exponent, dry_*,
  xtc_*, mirostat*, samplers, repeat_penalty, repeat_last_n;
- llmgen's own: penalty_scope, penalty_window, epsilon_cutoff, eta_cutoff, reasoning_budget, regex,
  choice, logprobs_mode ("raw", the default, or "processed": the distribution each token was drawn
  from, after penalties, temperature and truncation).
The sampler fields come from the stage records (`fields.py`), so a new stage is a request field at once.
A field that is none of these is refused with a 400 naming it; so are the ones not mapped yet
(`NOT_YET`). Errors are `APIError`s, which the app turns into OpenAI's error object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import MAX_TOP, LogprobSpec, Mode
from llmgen.errors import ConfigError
from llmgen.serve import fields
from llmgen.serve.errors import APIError as APIError  # re-exported: the app and the tests read it here

# The sampler fields (every stage's settings, `fields.py`) and the rest of the decoding settings.
SAMPLING_FIELDS = ("max_tokens", "max_completion_tokens", "n", "seed", "stop", "response_format", "ignore_eos",
                   "regex", "choice", *fields.REQUEST_FIELDS)
COMMON_FIELDS = ("model", "stream", "stream_options", "user", "cache_prompt") + SAMPLING_FIELDS
CHAT_FIELDS = frozenset(COMMON_FIELDS + ("messages", "logprobs", "top_logprobs", "logprobs_mode", *fields.CHAT_ONLY))
COMPLETION_FIELDS = frozenset(COMMON_FIELDS + ("prompt", "logprobs", "echo", "best_of", "logprobs_mode"))

# Request field -> DecodingConfig field, where the value maps one to one (checked by `config.coerce`).
DIRECT = {"seed": "seed", "ignore_eos": "ignore_eos", "regex": "regex", "choice": "choice"}

# Fields not mapped yet: each is accepted only at its "off" value; anything else is a 400. (The token
# controls, then every other sampler stage, were here until mapped; now none is.)
NOT_YET: dict[str, Any] = {}

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Request:
    """A checked request: its prompt (chat messages or completion prompts), settings and output options."""

    kind: str  # "chat" or "completion"
    model: str
    config: DecodingConfig
    messages: list[dict[str, str]] = field(default_factory=list)  # chat
    prompts: list[str | list[int]] = field(default_factory=list)  # completion: texts or token ids
    logprobs: LogprobSpec | None = None
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # completions: the prompt (and its logprobs) before the output
    score_only: bool = False  # echo with max_tokens 0: the prompt's logprobs, nothing generated
    cache_prompt: bool = True  # llama-server's field: false = prefill the whole prompt (no prefix cache)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:  # NOTE: Python's json reads NaN and Infinity, which JSON has not: refused, not passed to the ranges
        body = json.loads(raw, parse_constant=_no_constant)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, a constant
        raise APIError(f"the body is not valid JSON: {getattr(err, 'msg', err)}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(f"the body must be a JSON object, not {_kind(body)}", code="invalid_json")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def chat_request(body: Mapping[str, Any], base: DecodingConfig, max_n: int) -> Request:
    check_known(body, CHAT_FIELDS)
    messages = parse_messages(body.get("messages"))
    spec = None
    if _get(body, "logprobs", bool, False):
        spec = LogprobSpec(_int_in(body, "top_logprobs", 0, MAX_TOP, 0), _mode(body))
    elif body.get("top_logprobs") is not None or body.get("logprobs_mode") is not None:
        raise APIError("top_logprobs and logprobs_mode need logprobs: true", param="logprobs")
    return Request("chat", _model(body), to_config(body, base, max_n), messages=messages, logprobs=spec,
                   stream=_get(body, "stream", bool, False), include_usage=_include_usage(body),
                   cache_prompt=_get(body, "cache_prompt", bool, True))


def completion_request(body: Mapping[str, Any], base: DecodingConfig, max_n: int) -> Request:
    if body.get("chat_template_kwargs") is not None:
        raise APIError("chat_template_kwargs applies to /v1/chat/completions (a completion prompt is used as "
                       "written)", param="chat_template_kwargs")
    check_known(body, COMPLETION_FIELDS)
    echo = _get(body, "echo", bool, False)
    if echo and body.get("stream"):
        raise APIError("echo is supported without stream only", param="echo")
    prompts = _prompts(body.get("prompt"))
    score_only = echo and body.get("max_tokens") == 0  # NOTE: scoring a text (lm-eval's loglikelihood)
    config = to_config({k: v for k, v in body.items() if k != "max_tokens"} if score_only else body, base, max_n)
    best_of = body.get("best_of")
    if best_of is not None and best_of != config.n:
        raise APIError("best_of is supported only equal to n (no ranking of samples)", param="best_of")
    if len(prompts) * config.n > max_n:
        raise APIError(f"{len(prompts)} prompts x n={config.n} rows is above this server's limit of {max_n} "
                       "(--max-batch)", param="n")
    top = body.get("logprobs")
    if top is None and body.get("logprobs_mode") is not None:
        raise APIError("logprobs_mode needs logprobs: N", param="logprobs_mode")
    spec = None if top is None else LogprobSpec(_int_in(body, "logprobs", 0, MAX_TOP, 0), _mode(body))
    return Request("completion", _model(body), config, prompts=prompts, logprobs=spec,
                   stream=_get(body, "stream", bool, False), include_usage=_include_usage(body), echo=echo,
                   score_only=score_only, cache_prompt=_get(body, "cache_prompt", bool, True))


def to_config(body: Mapping[str, Any], base: DecodingConfig, max_n: int) -> DecodingConfig:
    """The request's decoding settings: `base` (defaults < preset) with the request's fields on top.

    vLLM's mapping (`SamplingParams` from the request): max_tokens, or else max_completion_tokens, is
    the token budget (absent: the base's `max_new_tokens`; the context bounds it either way); top_k -1
    means off (llmgen's 0); temperature 0 is greedy; `stop` is a string or a list of strings;
    response_format json_object / json_schema go through llmgen's constraints.
    """
    changes: dict[str, Any] = {}
    for name, (off, alt) in NOT_YET.items():
        value = body.get(name)
        if value is not None and value != off and value != alt:
            raise APIError(f"{name} is not supported by this server yet", param=name, code="unsupported_parameter")
    for name, target in DIRECT.items():
        if body.get(name) is not None:
            changes[target] = fields.coerce_field(target, body[name], name)
    samplers, given_as = fields.sampler_changes(body)
    changes.update(samplers)
    changes.update(fields.chat_template_kwargs(body))
    budget = body.get("max_tokens")
    budget_name = "max_tokens"
    if budget is None:
        budget, budget_name = body.get("max_completion_tokens"), "max_completion_tokens"
    if budget is not None:
        changes["max_new_tokens"] = fields.coerce_field("max_new_tokens", budget, budget_name)
    given_as["max_new_tokens"] = budget_name
    if body.get("stop") is not None:
        changes["stop"] = fields.coerce_field("stop", body["stop"], "stop")
    if body.get("n") is not None:
        n = fields.coerce_field("n", body["n"], "n")
        if not 1 <= n <= max_n:
            raise APIError(f"n must be from 1 to {max_n} (this server's --max-batch), got {n}", param="n")
        changes["n"] = n
    changes.update(_response_format(body.get("response_format")))
    try:
        config = base.replace(**changes)
    except ConfigError as err:  # a range check of DecodingConfig: name the request's field, not llmgen's flag
        param = fields.param_of(err, given_as)
        message = str(err) if param is None else f"invalid value for {param}: {err.reason}"
        raise APIError(message, param=param) from None
    given = [name for name in ("schema", "json_object", "regex", "choice") if getattr(config, name) not in (None, False, ())]
    if len(given) > 1:
        raise APIError(f"one constraint at a time, not {' and '.join(given)}", param="response_format")
    if given and config.ignore_eos:
        raise APIError(f"{given[0]} ends when the output is complete; drop ignore_eos", param="ignore_eos")
    return config


def _response_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise APIError("response_format must be an object with a \"type\"", param="response_format")
    kind = value["type"]
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise APIError("response_format json_schema needs {\"json_schema\": {\"name\", \"schema\": {...}}}",
                           param="response_format")
        # NOTE: strict or not, the schema is enforced token by token: llmgen has no looser mode.
        return {"schema": json.dumps(spec["schema"])}
    raise APIError(f"response_format type must be text, json_object or json_schema, not {kind!r}",
                   param="response_format")


def check_known(body: Mapping[str, Any], known: frozenset[str]) -> None:
    """A field not in `known` is a 400 naming it (code unknown_field): none is dropped silently."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise APIError(f"unknown or unsupported field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                       param=unknown[0], code="unknown_field")


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError("model is required: a string (see GET /v1/models)", param="model")
    return model


def parse_messages(value: Any) -> list[dict[str, str]]:
    """OpenAI's messages: roles system, developer (as system), user, assistant; text content."""
    if not isinstance(value, list) or not value:
        raise APIError("messages must be a non-empty list of {\"role\", \"content\"}", param="messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise APIError(f"messages[{i}] must be an object, not {_kind(message)}", param="messages")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise APIError(f"messages[{i}]: unsupported field {extra[0]} (no tools here)", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(f"messages[{i}].role must be one of {', '.join(ROLES)}, not {role!r}", param="messages")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(message.get("content"), i)})
    return out


def _content(value: Any, i: int) -> str:
    """A string, or a list of text parts (OpenAI's content parts; only "text" parts here)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise APIError(f"messages[{i}].content must be a string or a list of text parts", param="messages")


def _prompts(value: Any) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids or a list of such lists."""
    def ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                       for t in v)

    if isinstance(value, str):
        return [value]
    if ids(value):
        return [list(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) or ids(v) for v in value):
        return [v if isinstance(v, str) else list(v) for v in value]
    raise APIError("prompt must be a string, a list of strings, or token ids (a list of integers, or of lists)",
                   param="prompt")


def _mode(body: Mapping[str, Any]) -> Mode:
    mode = body.get("logprobs_mode", "raw")
    if mode not in ("raw", "processed"):
        raise APIError(f"logprobs_mode must be \"raw\" or \"processed\", not {mode!r}", param="logprobs_mode")
    return mode


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
        raise APIError("stream_options must be {\"include_usage\": true|false}", param="stream_options")
    if options and not body.get("stream"):
        raise APIError("stream_options needs stream: true", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise APIError("stream_options.include_usage must be true or false", param="stream_options")
    return include


def _get(body: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise APIError(f"invalid value for {name}: {value!r} must be {kind.__name__}", param=name)
    return value


def _int_in(body: Mapping[str, Any], name: str, low: int, high: int, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise APIError(f"invalid value for {name}: {value!r} must be an integer from {low} to {high}", param=name)
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
