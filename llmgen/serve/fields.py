"""The sampler fields of a request: every setting of every llmgen sampler stage, named as llama-server
names it where it has the setting, else as vLLM does, else as llmgen does.

Derived, not listed: each `Stage` record's switches and params (`decoding/processors/registry.py`) are
request fields, under the `DecodingConfig` field's name except where llama-server spells it otherwise
(`config.REQUEST_NAMES`: dynatemp_exponent). A stage added to the registry is a request field at once.
The mask stage is no record: its settings (`config.MASK_FIELDS`: vLLM's logit_bias, min_tokens,
stop_token_ids, bad_words, allowed_token_ids; llmgen's reasoning_budget) are added, with `samplers`
(llama-server's stage order) and `chat_template_kwargs` (vLLM's; chat requests only).

Spellings with a meaning of their own:
- top_k, top_n_sigma: -1 is off (vLLM's top_k, llama-server's both), as llmgen's 0;
- samplers: a list of stage names (llama.cpp's spellings too), or a string: llama-server's letters
  ("edkypmxt"), else `;`-separated names or a named order, as `--samplers`; with mirostat on, a list
  that leaves it out gets it last (llama-server runs Mirostat whatever the list says);
- repeat_penalty (llama-server) is repetition_penalty (both may be given, with the same value);
- repeat_last_n (llama-server): N > 0 is penalty_window N; -1 (the whole context) is penalty_window 0;
  0, llama-server's "no tokens are counted", turns the penalties off.

Then against the model (`check_for_model`): a field that names a token the vocabulary lacks, a bad
word the vocabulary cannot spell, and a reasoning budget without think tags are 400s naming the field,
before any row is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmgen.decoding.config import MASK_FIELDS, REQUEST_NAMES, DecodingConfig, canonical_key, coerce
from llmgen.decoding.processors.registry import STAGES
from llmgen.errors import ConfigError, LlmgenError
from llmgen.serve.errors import APIError

SPECIAL = ("top_k", "top_n_sigma")  # stage settings where -1 is off (vLLM's top_k, llama-server's both)

# Request field -> DecodingConfig field, one to one (each value checked by `config.coerce`).
SAMPLER_FIELDS: dict[str, str] = {
    REQUEST_NAMES.get(name, name): name
    for name in dict.fromkeys([*(f for s in STAGES for f in (*s.switches, *s.params)), *MASK_FIELDS, "samplers"])
    if name not in SPECIAL}
# llama-server's spellings of settings that have another name here (see the module docstring).
LLAMA_ALIASES = ("repeat_penalty", "repeat_last_n")
CHAT_ONLY = ("chat_template_kwargs",)
REQUEST_FIELDS = (*SAMPLER_FIELDS, *SPECIAL, *LLAMA_ALIASES)  # the sampler fields of both endpoints
FIELD_OF_REQUEST = {config_name: request for request, config_name in SAMPLER_FIELDS.items()}
PENALTIES_OFF = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
# llama-server's one-letter stage names (`samplers` as a string: llama.cpp's common_sampler_type_from_chr).
LLAMA_LETTERS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k", "y": "typical_p", "p": "top_p",
                 "m": "min_p", "x": "xtc", "t": "temperature"}


def sampler_changes(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The DecodingConfig changes the request's sampler fields ask for, and the request field each
    changed setting came from (to name it in a refusal). Types are checked here; ranges by the config."""
    changes: dict[str, Any] = {}
    given: dict[str, str] = {}
    for request, name in SAMPLER_FIELDS.items():
        if body.get(request) is not None:
            changes[name], given[name] = coerce_field(name, body[request], request), request
    if "samplers" in changes:
        changes["samplers"] = _llama_order(body["samplers"], changes["samplers"], changes.get("mirostat", 0))
    for name in SPECIAL:
        if body.get(name) is not None:
            value = coerce_field(name, body[name], name)
            changes[name], given[name] = (type(value)(0) if value == -1 else value), name
    if body.get("repeat_penalty") is not None:
        value = coerce_field("repetition_penalty", body["repeat_penalty"], "repeat_penalty")
        if changes.get("repetition_penalty", value) != value:
            raise APIError("repeat_penalty and repetition_penalty are one setting: give one, or the same value",
                           param="repeat_penalty")
        changes["repetition_penalty"], given["repetition_penalty"] = value, "repeat_penalty"
    if body.get("repeat_last_n") is not None:
        last_n = coerce_field("penalty_window", body["repeat_last_n"], "repeat_last_n")
        if last_n < -1:
            raise APIError(f"invalid value for repeat_last_n: {last_n} must be >= -1 (-1 = the whole context, "
                           "0 = no penalties)", param="repeat_last_n")
        if last_n == 0:  # NOTE: llama-server counts no tokens: every penalty is a no-op
            changes.update(PENALTIES_OFF)
        elif "penalty_window" in given and changes["penalty_window"] != max(last_n, 0):
            raise APIError("repeat_last_n and penalty_window are one setting: give one, or the same value",
                           param="repeat_last_n")
        else:
            changes["penalty_window"], given["penalty_window"] = max(last_n, 0), "repeat_last_n"
    return changes, given


def _llama_order(value: Any, order: tuple[str, ...], mirostat: int) -> tuple[str, ...]:
    """llama-server's readings of `samplers`: a string of its letters ("edkypmxt") is those stages; and
    with Mirostat on, llama-server runs it whatever the list says, so a list without it gets it last."""
    if isinstance(value, str) and value and set(value) <= set(LLAMA_LETTERS):
        order = tuple(LLAMA_LETTERS[c] for c in value)
    if mirostat and "mirostat" not in order:
        order = (*order, "mirostat")
    return order


def chat_template_kwargs(body: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's chat_template_kwargs (an object) as the config field's changes ({} when absent)."""
    value = body.get("chat_template_kwargs")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.strip() for k in value):
        raise APIError("chat_template_kwargs must be an object of the template's variables", param="chat_template_kwargs")
    return {"chat_template_kwargs": coerce_field("chat_template_kwargs", value, "chat_template_kwargs")}


def coerce_field(name: str, value: Any, param: str) -> Any:
    """`config.coerce` of a DecodingConfig field, a wrong type refused as a 400 naming the request field."""
    try:
        return coerce(name, value)
    except ConfigError as err:
        message = err.reason if err.reason is not None else str(err)
        raise APIError(f"invalid value for {param}: {message}", param=param) from None


def param_of(err: ConfigError, given: Mapping[str, str]) -> str | None:
    """The request field a config's range check is about: as the request spelt it, else its request name."""
    if err.field is None:
        return None
    name = canonical_key(err.field) or err.field
    return given.get(name) or FIELD_OF_REQUEST.get(name, name)


def vocabulary(loaded: Any) -> int:
    """The token ids a request may name: those of both the model's logits and the tokenizer."""
    return min(int(loaded.vocab_size), len(loaded.tokenizer))


def check_tokens(config: DecodingConfig, size: int) -> None:
    """A field naming a token id the vocabulary lacks is a client error (400), not a failed row."""
    named = (("logit_bias", [t for t, _ in config.logit_bias]), ("stop_token_ids", config.stop_token_ids),
             ("allowed_token_ids", config.allowed_token_ids))
    for field, ids in named:
        unknown = [t for t in ids if t >= size]
        if unknown:
            raise APIError(f"invalid value for {field}: token {unknown[0]} is not in the vocabulary ({size} tokens)",
                           param=field)


def check_for_model(config: DecodingConfig, loaded: Any) -> Any:
    """The request's settings against the model; returns the token tables its rows use (None when no
    stage needs them), built here so that a setting the vocabulary cannot serve is a 400, not a 500."""
    from llmgen.decoding.processors.tables import THINK_CLOSE, THINK_OPEN, needs_tables, tables_for

    check_tokens(config, vocabulary(loaded))
    # NOTE: the tables tokenize these; a GGUF vocabulary without byte tokens may not spell them
    spelled = [("bad_words", word) for word in config.bad_words]
    if config.reasoning_budget >= 0:
        spelled += [("reasoning_budget", THINK_OPEN), ("reasoning_budget", THINK_CLOSE)]
    for field, text in spelled:
        try:
            loaded.tokenizer(text, add_special_tokens=False)
        except LlmgenError as err:
            raise APIError(f"invalid value for {field}: {err}", param=field) from None
    try:
        tables = tables_for(config, loaded.tokenizer, loaded.eos_token_ids)
    except LlmgenError as err:  # NOTE: what is left to fail: think tags of no tokens, or the tail of a DRY breaker
        message = str(err).replace("--reasoning-budget", "reasoning_budget")
        param = "reasoning_budget" if "reasoning_budget" in message else "dry_sequence_breakers"
        raise APIError(message, param=param) from None
    return tables if needs_tables(config) else None  # as the batch would build them (`batch.py`)
