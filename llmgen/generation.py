"""From a token source to a finished sequence: stop rules, streaming text and statistics.

A token source yields `(token_id, origin)` pairs, where origin says where a token came from:
"target" for plain decoding; "accepted", "resampled" or "bonus" for speculative decoding.
`run_sequence` consumes it until one of the stop rules fires, in this order per token:
end-of-sequence (unless ignored), a stop string in the text, `max_new_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgen.config import DecodingConfig
from llmgen.errors import PromptError, UsageError
from llmgen.stats import Timer
from llmgen.textstream import TextStream

TokenSource = Iterator[tuple[int, str]]
# Called with each piece of final text and the origin of the token that completed it.
OnText = Callable[[str, str], None]


@dataclass
class SequenceResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str  # "length", "stop" or "eos"
    stats: dict[str, Any] = field(default_factory=dict)
    score: float | None = None  # beam search: sum of log-probs / length ** length_penalty

    def as_json(self) -> dict[str, Any]:
        out = {"text": self.text, "token_ids": self.token_ids, "prompt_token_ids": self.prompt_token_ids,
               "finish_reason": self.finish_reason, "stats": self.stats}
        if self.score is not None:
            out["score"] = self.score
        return out


def check_prompt(prompt_ids: Sequence[int], context_length: int) -> None:
    if not prompt_ids:
        raise PromptError("the prompt is empty")
    if len(prompt_ids) >= context_length:
        raise PromptError(f"the prompt is {len(prompt_ids)} tokens, but the model's context is "
                          f"{context_length} tokens (at least one must be left to generate)")


def encode_prompt(loaded: Any, text: str, chat: bool | None, system: str | None = None) -> list[int]:
    """Prompt ids: the chat template when asked (None: when the tokenizer has one), else exactly
    `tokenizer(text)`. `loaded` is a `models.LoadedModel`. Checked against the context length."""
    tokenizer = loaded.tokenizer
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use_chat = has_template if chat is None else chat
    if use_chat and not has_template:
        raise UsageError(f"--chat: the tokenizer of {loaded.ref!r} has no chat template; use --raw")
    if system and not use_chat:
        raise UsageError("--system needs chat mode")
    if use_chat:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        ids = tokenizer(text)["input_ids"]
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    check_prompt(ids, loaded.context_length)
    return ids


def token_budget(prompt_len: int, config: DecodingConfig, context_length: int) -> int:
    """max_new_tokens, cut so that prompt and output fit the context."""
    return max(0, min(config.max_new_tokens, context_length - prompt_len))


def run_sequence(source: TokenSource, tokenizer: Any, prompt_ids: Sequence[int], config: DecodingConfig,
                 eos_token_ids: frozenset[int], context_length: int,
                 on_text: OnText | None = None) -> SequenceResult:
    stream = TextStream(tokenizer, config.stop)
    timer = Timer()
    budget = token_budget(len(prompt_ids), config, context_length)
    tokens: list[int] = []
    reason = "length"
    origin = "target"
    try:
        for token, origin in source:
            tokens.append(token)
            timer.token()
            if token in eos_token_ids and not config.ignore_eos:
                reason = "eos"
                break
            piece = stream.push(token)
            if piece and on_text:
                on_text(piece, origin)
            if stream.stopped:
                reason = "stop"
                break
            if len(tokens) >= budget:
                break
    finally:
        # NOTE: also runs on Ctrl-C or a broken pipe, so text already decided is not lost.
        piece = stream.finish()
        if piece and on_text:
            on_text(piece, origin)
    return SequenceResult(stream.text, tokens, list(prompt_ids), reason, timer.as_dict(len(prompt_ids)))

