"""Prompts to token ids, as generation uses them, and `POST /tokenize` / `POST /detokenize` over the same code.

`chat_ids` and `text_ids` are THE encodings of a request's prompt (`app._encode` calls them), so that
/tokenize counts exactly the tokens /v1/chat/completions and /v1/completions decode from.

/tokenize, in the shape asked:
- vLLM's: {"prompt", "add_special_tokens" (true)} or {"messages", "add_generation_prompt" (true),
  "chat_template_kwargs"}, with "model" optional -> {"count", "max_model_len", "tokens"};
- llama-server's: {"content", "add_special" (false), "with_pieces" (false)} -> {"tokens"}: ids, or
  with_pieces [{"id", "piece"}] (the piece is the token decoded alone, as text).
/detokenize {"tokens"} -> {"prompt", "content"}: the text under both shapes' keys (vLLM's "prompt",
llama-server's "content"; the request cannot tell which), special tokens written out.
A token id outside the vocabulary is a 400 naming "tokens".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmgen.decoding.chat import render
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import LlmgenError
from llmgen.serve import fields
from llmgen.serve.errors import APIError
from llmgen.serve.protocol import check_known, parse_messages, to_config

VLLM_TEXT = frozenset({"model", "prompt", "add_special_tokens"})
VLLM_CHAT = frozenset({"model", "messages", "add_generation_prompt", "chat_template_kwargs", "add_special_tokens"})
LLAMA = frozenset({"model", "content", "add_special", "with_pieces"})


def chat_ids(loaded: Any, messages: list[dict[str, str]], config: DecodingConfig,
             add_generation_prompt: bool = True) -> list[int]:
    """The chat template over the messages, with the settings' template variables (`chat.render`, as
    `llmgen chat` and `generate --chat` render). A template that refuses the messages is a 400."""
    tokenizer = loaded.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError("this model has no chat template; use /v1/completions", param="messages")
    kwargs = config.template_kwargs()
    # NOTE: a GGUF file whose template llama.cpp names (no jinja) renders without variables
    if kwargs and getattr(tokenizer, "builtin_template", None):
        raise APIError("chat_template_kwargs: this GGUF file's chat template is one of llama.cpp's built-in "
                       "formats, which take no variables", param="chat_template_kwargs")
    try:
        if add_generation_prompt:
            return render(tokenizer, messages, kwargs)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, **kwargs)
        return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]
    except _template_errors() as err:
        raise APIError(f"the chat template refused these messages: {err}", param="messages") from None


def _template_errors() -> tuple[type[Exception], ...]:
    """What a template raises on messages it refuses: jinja's TemplateError (its raise_exception()), a
    ValueError (no template), a PromptError (text the vocabulary cannot spell)."""
    try:
        from jinja2 import TemplateError
    except ImportError:  # no jinja: no template to refuse anything
        return (LlmgenError, ValueError)
    return (LlmgenError, ValueError, TemplateError)


def text_ids(loaded: Any, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
    """`tokenizer(text)`, what `llmgen generate --raw` reads; text the vocabulary cannot spell is a 400."""
    try:
        return [int(i) for i in loaded.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]
    except LlmgenError as err:
        raise APIError(str(err), param=param) from None


def tokenize(loaded: Any, base: DecodingConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /tokenize (the module docstring): the ids in the shape asked."""
    asked = [key for key in ("prompt", "messages", "content") if key in body]
    if len(asked) != 1:
        raise APIError("/tokenize needs one of prompt (vLLM), messages (vLLM, chat) or content (llama-server)",
                       param=asked[1] if asked else None)
    shape = asked[0]
    check_known(body, {"prompt": VLLM_TEXT, "messages": VLLM_CHAT, "content": LLAMA}[shape])
    if shape == "content":
        text = _text(body, "content")
        ids = text_ids(loaded, text, "content", _flag(body, "add_special", False))
        if not _flag(body, "with_pieces", False):
            return {"tokens": ids}
        decode = loaded.tokenizer.decode
        return {"tokens": [{"id": i, "piece": decode([i])} for i in ids]}
    if shape == "prompt":
        ids = text_ids(loaded, _text(body, "prompt"), "prompt", _flag(body, "add_special_tokens", True))
    else:
        if _flag(body, "add_special_tokens", False):
            raise APIError("add_special_tokens with messages: the chat template writes the special tokens",
                           param="add_special_tokens")
        config = to_config({"chat_template_kwargs": body.get("chat_template_kwargs")}, base, 1)
        ids = chat_ids(loaded, parse_messages(body.get("messages")), config,
                       _flag(body, "add_generation_prompt", True))
    return {"count": len(ids), "max_model_len": loaded.context_length, "tokens": ids}


def detokenize(loaded: Any, base: DecodingConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST /detokenize: the text of the ids, special tokens included, under vLLM's and llama-server's keys."""
    check_known(body, frozenset({"model", "tokens"}))
    ids = body.get("tokens")
    size = fields.vocabulary(loaded)
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise APIError("tokens must be a list of token ids (integers)", param="tokens")
    wrong = [t for t in ids if not 0 <= t < size]
    if wrong:
        raise APIError(f"token {wrong[0]} is not in the vocabulary ({size} tokens)", param="tokens")
    text = loaded.tokenizer.decode(ids, skip_special_tokens=False)
    return {"prompt": text, "content": text}


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise APIError(f"{name} must be a string", param=name)
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(f"{name} must be true or false", param=name)
    return value
