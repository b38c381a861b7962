"""From a token source to a finished sequence: stop rules, streaming text and statistics.

A token source yields `Token`s: the id, where it came from ("target" for plain decoding; "accepted",
"resampled" or "bonus" for speculative decoding) and, when asked for, its logprobs (computed where
the token was picked, carried with it into the result).
`run_sequence` consumes it until one of the stop rules of `SequenceState` fires, in this order per
token: end-of-sequence (unless ignored), a stop string in the text, `max_new_tokens`. Batched decoding
(`batch.py`) keeps one `SequenceState` per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import TokenLogprob, to_json
from llmgen.decoding.stats import Timer
from llmgen.decoding.textstream import TextStream
from llmgen.errors import PromptError, UsageError


@dataclass(frozen=True, slots=True)
class Token:
    """One generated token: its id, its origin, and its logprobs when they were asked for."""

    id: int
    origin: str = "target"  # "target", or the speculative "accepted", "resampled", "bonus"
    logprob: TokenLogprob | None = None


TokenSource = Iterator[Token]
# Called with each piece of final text, the origin of the token that completed it, and that token's
# logprobs (None when not asked for, and for text released at the end).
OnText = Callable[[str, str, TokenLogprob | None], None]


@dataclass
class SequenceResult:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str  # "length", "stop" (a stop string, or a constraint complete) or "eos"
    stats: dict[str, Any] = field(default_factory=dict)
    score: float | None = None  # beam search: sum of log-probs / length ** length_penalty
    logprobs: list[dict[str, Any]] | None = None  # --logprobs: one entry per token id (`logprobs.to_json`)

    def as_json(self) -> dict[str, Any]:
        reasoning, text = split_reasoning(self.text)
        out: dict[str, Any] = {"text": text, "token_ids": self.token_ids, "prompt_token_ids": self.prompt_token_ids,
               "finish_reason": self.finish_reason, "stats": self.stats}
        if reasoning is not None:
            out["reasoning"] = reasoning
        if self.score is not None:
            out["score"] = self.score
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a text with a `<think>...</think>` span; (None, text) without one.

    The span may start in the prompt (a template that opens it): text before "</think>" is reasoning
    then. An unclosed "<think>" makes the rest reasoning, and the answer empty.
    """
    close = text.find(THINK_CLOSE)
    opened = text.find(THINK_OPEN)
    if close < 0 and opened < 0:
        return None, text
    if close < 0:
        return text[opened + len(THINK_OPEN):].strip(), text[:opened].strip()
    start = opened + len(THINK_OPEN) if 0 <= opened < close else 0
    return text[start:close].strip(), text[close + len(THINK_CLOSE):].lstrip()


def check_prompt(prompt_ids: Sequence[int], context_length: int) -> None:
    if not prompt_ids:
        raise PromptError("the prompt is empty")
    if len(prompt_ids) >= context_length:
        raise PromptError(f"the prompt is {len(prompt_ids)} tokens, but the model's context is "
                          f"{context_length} tokens (at least one must be left to generate)")


def encode_prompt(loaded: Any, text: str, chat: bool | None, system: str | None = None,
                  template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Prompt ids: the chat template when asked (None: when the tokenizer has one), else exactly
    `tokenizer(text)`. `loaded` is a `models.LoadedModel`. Checked against the context length.
    `template_kwargs` (--chat-template-kwarg, e.g. enable_thinking=False) go to the template."""
    tokenizer = loaded.tokenizer
    has_template = bool(getattr(tokenizer, "chat_template", None))
    use_chat = has_template if chat is None else chat
    if template_kwargs and not use_chat:
        raise UsageError("--chat-template-kwarg needs chat mode (a chat template)")
    if use_chat and not has_template:
        raise UsageError(f"--chat: the tokenizer of {loaded.ref!r} has no chat template; use --raw")
    if system and not use_chat:
        raise UsageError("--system needs chat mode")
    if use_chat:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            **(template_kwargs or {}))
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


class SequenceState:
    """One sequence's stop rules, text and timer, fed one token at a time.

    The stop rules, in this order per token: end-of-sequence (unless ignored), a stop string in the
    text, the token budget. Plain, speculative and batched decoding all stop through this class.
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], config: DecodingConfig,
                 eos_token_ids: frozenset[int], context_length: int) -> None:
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.stream = TextStream(tokenizer, config.stop)
        self.stream.armed = config.min_tokens == 0  # --min-tokens: no stop string before N tokens
        self.timer = Timer()
        self.budget = token_budget(len(prompt_ids), config, context_length)
        self.tokens: list[int] = []
        self.logprobs: list[TokenLogprob] | None = None  # set on the first token that carries logprobs
        self.reason: str | None = None  # set once the sequence is finished

    @property
    def done(self) -> bool:
        return self.reason is not None

    def push(self, token: int, logprob: TokenLogprob | None = None) -> str:
        """Add one token; return the text that became final. Sets `reason` when a stop rule fires."""
        self.tokens.append(token)
        if logprob is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.append(logprob)
        self.timer.token()
        if not self.stream.armed and len(self.tokens) >= self.config.min_tokens:
            self.stream.arm()
        if token in self.config.stop_token_ids:  # --stop-token-id (ignore_eos does not cover it, as in vLLM)
            self.reason = "stop"
            return ""
        if token in self.eos_token_ids and not self.config.ignore_eos:
            # NOTE: with a constraint, end-of-sequence is allowed only once the output is complete.
            self.reason = "stop" if self.config.constrained else "eos"
            return ""
        piece = self.stream.push(token)
        if self.stream.stopped:
            self.reason = "stop"
        elif len(self.tokens) >= self.budget:
            self.reason = "length"
        return piece

    def finish(self) -> str:
        """Release the text held back (also after an interruption); returns it."""
        if self.reason is None:
            self.reason = "length"
        return self.stream.finish()

    def result(self) -> SequenceResult:
        return SequenceResult(self.stream.text, self.tokens, self.prompt_ids, self.reason or "length",
                              self.timer.as_dict(len(self.prompt_ids)),
                              logprobs=None if self.logprobs is None else to_json(self.logprobs, self.stream.tokenizer))


def run_sequence(source: TokenSource, tokenizer: Any, prompt_ids: Sequence[int], config: DecodingConfig,
                 eos_token_ids: frozenset[int], context_length: int,
                 on_text: OnText | None = None) -> SequenceResult:
    state = SequenceState(tokenizer, prompt_ids, config, eos_token_ids, context_length)
    origin = "target"
    try:
        for token in source:
            origin = token.origin
            piece = state.push(token.id, token.logprob)
            if piece and on_text:
                on_text(piece, origin, token.logprob)
            if state.done:
                break
    finally:
        # NOTE: also runs on Ctrl-C or a broken pipe, so text already decided is not lost.
        piece = state.finish()
        if piece and on_text:
            on_text(piece, origin, None)
    return state.result()
