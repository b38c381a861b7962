"""The tokenizer interface: the part of a tokenizer that llmgen's decoding, serving and evaluation call.

Two implementations: a transformers tokenizer (the torch engine, `hf.py`) and `GGUFTokenizer` (the
llama.cpp engine: the file's own vocabulary and chat template through llama.cpp). `GGUFTokenizer`
subclasses `Tokenizer`, so mypy checks every method's signature against this protocol, and
`tests/loading/test_tokenizer_protocol.py` calls each method on both kinds with the same arguments: a
method that one of them lacks is a failed check in CI, not an AttributeError on a user's machine
(DRY's token tables once called `batch_decode`, which only transformers had).

- `tokenizer(text, add_special_tokens=True)["input_ids"]`: text to ids (special tokens written in the
  text are parsed);
- `decode(ids, skip_special_tokens=False)` and `batch_decode(rows, skip_special_tokens=False)`;
- `apply_chat_template(messages, add_generation_prompt=False, tokenize=True, **template_kwargs)`: the
  keyword arguments (`--chat-template-kwarg enable_thinking=false`) are the template's variables;
- `get_vocab()`, `eos_token_id`, `chat_template`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """What llmgen calls of a tokenizer (see the module docstring)."""

    eos_token_id: int | None
    chat_template: str | None

    def __call__(self, text: str, add_special_tokens: bool = True) -> Mapping[str, list[int]]: ...

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str: ...

    def batch_decode(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]: ...

    # NOTE: the template's variables are open-ended (each template reads its own), hence Any.
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **template_kwargs: Any) -> Any: ...

    def get_vocab(self) -> dict[str, int]: ...


METHODS = ("__call__", "decode", "batch_decode", "apply_chat_template", "get_vocab")
