"""A GGUF file's own tokenizer and chat template, through llama.cpp: what llmgen uses of an HF tokenizer.

The llama.cpp engine feeds the ids llama.cpp itself makes (`llama_tokenize`), so that a prompt is the
same token sequence llama.cpp's own tools would decode. The surface is the part of a transformers
tokenizer that llmgen calls:

- `tokenizer(text)["input_ids"]`: `llama_tokenize(text, add_special, parse_special=True)`; special
  tokens written in the text (`<|im_start|>`) are parsed, as transformers does;
- `apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **template_kwargs)`: the file's
  `tokenizer.chat_template` rendered with jinja2 the way transformers renders it (sandboxed, trim_blocks,
  lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`, the special tokens as variables), then
  tokenized without adding special tokens (the template writes its own BOS); the keyword arguments
  (`--chat-template-kwarg enable_thinking=false`) are the template's variables, as in transformers;
- `decode(ids, skip_special_tokens=True)`: `llama_detokenize` (control tokens are dropped unless asked),
  and `batch_decode(rows)`, one `decode` per row;
- `chat_template`, `eos_token_id`, `get_vocab()`, and `llguidance_tokenizer()` for constraints.

A file without a template (the Gemma-3 GGUF has none) whose architecture has a llama.cpp built-in
format (`BUILTIN_TEMPLATES`) is rendered by `llama_chat_apply_template` with that format instead, and
tokenized with BOS added, as llama-server does; a built-in format has no variables, so template keyword
arguments change nothing there (as a jinja template that does not read them).

The class implements `loading.tokenizer.Tokenizer` (and says so: mypy checks the signatures).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from llmgen.errors import PromptError
from llmgen.loading.tokenizer import Tokenizer


class GGUFTokenizer(Tokenizer):
    """The vocabulary of a llama.cpp model (`engines.llamacpp.LlamaCppModel`), with the file's chat template."""

    def __init__(self, model: Any) -> None:
        self.model = model  # keeps the vocabulary's model alive
        lib = model.lib
        self.lib, self.vocab = lib, model.vocab
        self.vocab_size = model.vocab_size
        template = lib.llama_model_chat_template(model.pointer, None)
        self.chat_template: str | None = template.decode("utf-8", errors="replace") if template else None
        # A file without a template whose architecture has one of llama.cpp's built-in formats uses it
        self.builtin_template = None if self.chat_template else BUILTIN_TEMPLATES.get(_architecture(model))
        if self.builtin_template:
            self.chat_template = f"llama.cpp built-in template: {self.builtin_template}"
        self.eos_token_id = int(lib.llama_vocab_eos(self.vocab))
        self.bos_token_id = int(lib.llama_vocab_bos(self.vocab))
        self.add_bos = bool(lib.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(lib.llama_vocab_get_add_eos(self.vocab))
        self._vocab: dict[str, int] | None = None
        self._template: Any = None
        self._llguidance: Any = None
        self._spelled: frozenset[str] | None = None  # the characters of a vocabulary without byte tokens

    # --- text <-> ids ------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self._check_encodable(text)
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            tokens = (self.lib.llama_token * room)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, room, add_special_tokens, True)
            if n >= 0:
                return list(tokens[:n])
            room = -n

    def _check_encodable(self, text: str) -> None:
        """NOTE: llama.cpp aborts the process (an uncaught C++ exception) when a SentencePiece vocabulary
        without byte tokens (<0x41>) meets a character none of its tokens holds; refuse such text instead."""
        if self._spelled is None:
            lib, vocab = self.lib, self.vocab
            spm = int(lib.llama_vocab_type(vocab)) == 1  # LLAMA_VOCAB_TYPE_SPM
            # NOTE: the first byte token comes early in a real vocabulary (Gemma's: id 238 of 262k), so this
            # reads a few hundred attributes, not the whole vocabulary (as get_vocab() would)
            if not spm or any(lib.llama_vocab_get_attr(vocab, i) & lib.LLAMA_TOKEN_ATTR_BYTE
                              for i in range(self.vocab_size)):
                self._spelled = frozenset()
            else:
                normal = lib.LLAMA_TOKEN_ATTR_NORMAL  # not "<unk>", "<s>": they spell no "<"
                pieces = [text for text, i in self.get_vocab().items() if lib.llama_vocab_get_attr(vocab, i) & normal]
                self._spelled = frozenset("".join(pieces).replace("\u2581", " "))
        if self._spelled:
            missing = sorted(set(text) - self._spelled)
            if missing:
                raise PromptError(f"this model's vocabulary cannot spell {''.join(missing)[:20]!r} (no byte tokens)")

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        if isinstance(ids, int):
            ids = [ids]
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        array = (self.lib.llama_token * len(ids))(*ids)
        room = 8 * len(ids) + 16
        while True:
            buffer = ctypes.create_string_buffer(room)
            n = self.lib.llama_detokenize(self.vocab, array, len(ids), buffer, room, False, not skip_special_tokens)
            if n >= 0:
                return buffer.raw[:n].decode("utf-8", errors="replace")
            room = -n + 1

    def batch_decode(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def token_text(self, token: int) -> str:
        """The token as the vocabulary writes it (`Ġthe`, `▁the`, `<0x0A>`)."""
        return self.lib.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids: Sequence[int] | int) -> list[str] | str:
        if isinstance(ids, int):
            return self.token_text(ids)
        return [self.token_text(int(i)) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        if self._vocab is None:
            self._vocab = {self.token_text(i): i for i in range(self.vocab_size)}
        return self._vocab

    def __len__(self) -> int:
        return self.vocab_size

    # --- chat template -----------------------------------------------------------------------------

    def special_tokens(self) -> dict[str, str]:
        """bos_token and eos_token as the template sees them (their text), as transformers passes them."""
        names = {"bos_token": self.bos_token_id, "eos_token": self.eos_token_id}
        return {name: self.token_text(token) for name, token in names.items() if token >= 0}

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    template_kwargs: dict[str, Any] | None = None) -> str:
        if not self.chat_template:
            raise ValueError("this model's GGUF file has no chat template (tokenizer.chat_template)")
        if self._template is None:
            self._template = _compile(self.chat_template)
        variables = {"tools": None, "documents": None, **self.special_tokens(), **(template_kwargs or {})}
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **template_kwargs: Any) -> list[int] | str:
        if self.builtin_template:  # llama.cpp's renderer writes no BOS: tokenizing adds it, as llama-server does
            text = self.render_builtin(messages, add_generation_prompt)
            return self.encode(text, add_special_tokens=True) if tokenize else text
        text = self.render_chat(messages, add_generation_prompt, template_kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def render_builtin(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """`llama_chat_apply_template` with one of llama.cpp's named formats (no jinja)."""
        lib = self.lib
        chat = (lib.llama_chat_message * len(messages))(*[
            lib.llama_chat_message(role=str(m["role"]).encode(), content=str(m["content"]).encode())
            for m in messages])
        name = str(self.builtin_template).encode()
        room = 2 * sum(len(str(m["content"])) for m in messages) + 256
        while True:
            buffer = ctypes.create_string_buffer(room)
            n = lib.llama_chat_apply_template(name, chat, len(messages), add_generation_prompt, buffer, room)
            if n < 0:
                raise ValueError(f"llama.cpp cannot apply the {self.builtin_template} chat template")
            if n <= room:
                return buffer.raw[:n].decode("utf-8", errors="replace")
            room = n + 1

    # --- constraints -------------------------------------------------------------------------------

    def llguidance_tokenizer(self, eos_token_ids: Sequence[int]) -> Any:
        """llguidance's tokenizer over this vocabulary (built once; ~1 s for a 262k vocabulary)."""
        if self._llguidance is None:
            import llguidance.llamacpp

            self._llguidance = llguidance.llamacpp.lltokenizer_from_vocab(
                self.vocab, n_vocab=self.vocab_size, eos_token=sorted(eos_token_ids))
        return self._llguidance


# Architectures whose GGUF files often carry no template, and llama.cpp's built-in format for them.
BUILTIN_TEMPLATES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}


def _architecture(model: Any) -> str:
    buffer = ctypes.create_string_buffer(128)
    n = model.lib.llama_model_meta_val_str(model.pointer, b"general.architecture", buffer, 128)
    return buffer.value.decode("utf-8", errors="replace") if n > 0 else ""


def _compile(source: str) -> Any:
    """The template in a sandbox, with the globals and filters transformers gives chat templates."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)
