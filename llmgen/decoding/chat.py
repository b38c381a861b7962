"""A conversation, and one KV cache kept across its turns.

Each turn renders the *whole* conversation through the tokenizer's chat template, then reuses the
cache as far as it agrees with those tokens (llama.cpp's `--prompt-cache` idea):

1. ids = template(system + messages, add_generation_prompt=True)
2. n = the length of the longest common prefix of ids and the tokens the cache holds, at most
   len(ids) - 1 (the last prompt token is always read again: its logits start the reply)
3. the cache's `rollback(n)`, then the decoding loop prefills ids[n:] only.

A template that renders earlier turns differently once a new turn follows (some drop the reasoning of
old replies) simply gives a shorter prefix. Nothing else is assumed about the template.

When the conversation no longer fits (its tokens plus `max_new_tokens` exceed the context), the oldest
turns (a user message and the reply to it) are dropped, never the system message, and what is left is
prefilled again. A single message that cannot fit even alone is refused with `PromptError`.

A speculative chat keeps the draft's cache too, reused by the same rule against its own tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import Speculation, generate
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import OnText, SequenceResult
from llmgen.errors import PromptError, UsageError
from llmgen.loading.engines.base import Engine
from llmgen.loading.engines.prefix import common_prefix
from llmgen.loading.models import LoadedModel

ROLES = ("system", "user", "assistant")



@dataclass
class Conversation:
    """The system message and the turns so far, as OpenAI-style messages."""

    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)  # user and assistant, alternating

    def full(self) -> list[dict[str, str]]:
        """What the template renders: the system message first, when there is one."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.messages]

    def drop_oldest_turn(self) -> bool:
        """Drop the first user message and the replies up to the next user message; False if nothing to drop."""
        if len(self.messages) <= 1:
            return False
        end = 1
        while end < len(self.messages) - 1 and self.messages[end]["role"] != "user":
            end += 1
        del self.messages[:end]
        return True

    def to_json(self) -> list[dict[str, str]]:
        return self.full()

    @classmethod
    def from_json(cls, data: Any, source: str) -> Conversation:
        """A list of {"role", "content"} (or {"messages": [...]}), as OpenAI's chat API takes it."""
        if isinstance(data, dict) and "messages" in data:
            data = data["messages"]
        if not isinstance(data, list):
            raise UsageError(f"{source}: expected a JSON list of messages, got {type(data).__name__}")
        system, messages = None, []
        for index, message in enumerate(data):
            if not (isinstance(message, dict) and message.get("role") in ROLES
                    and isinstance(message.get("content"), str)):
                raise UsageError(f"{source}: message {index} is not {{\"role\": system|user|assistant, "
                                 f"\"content\": string}}: {json.dumps(message)[:80]}")
            if message["role"] == "system":
                if index != 0:
                    raise UsageError(f"{source}: message {index}: a system message must come first")
                system = message["content"]
            else:
                messages.append({"role": message["role"], "content": message["content"]})
        return cls(system, messages)

    @classmethod
    def load(cls, path: Path) -> Conversation:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
        return cls.from_json(data, str(path))

    def save(self, path: Path) -> None:
        try:
            path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror}") from None


def render(tokenizer: Any, messages: list[dict[str, str]], template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """The conversation through the chat template, ending with the assistant's generation prompt.
    `template_kwargs` (--chat-template-kwarg) go to the template."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **(template_kwargs or {}))
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


class ReusedCache:
    """A single-sequence cache (`engines.base.SequenceCache`) and the tokens it holds, reused by the common-prefix rule."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lm = engine.sequence()
        self.tokens: list[int] = []  # what the cache holds: len(tokens) == lm.length

    def reuse(self, ids: Sequence[int]) -> int:
        """Roll back to the prefix shared with `ids` (never all of it); return how many tokens were kept."""
        keep = min(common_prefix(self.tokens, ids), len(ids) - 1)
        self.lm.rollback(keep)
        self.tokens = list(ids[:keep])
        return keep

    def settle(self, sequence: Sequence[int]) -> None:
        """After a reply: the cache holds a prefix of prompt + the tokens read (it may hold more, from a
        speculative round the reader stopped inside; those are cut)."""
        keep = min(self.lm.length, len(sequence))
        self.lm.rollback(keep)
        self.tokens = list(sequence[:keep])

    def clear(self) -> None:
        """Forget everything (after an interruption, a forward may have been cut half-way)."""
        self.lm = self.engine.sequence()
        self.tokens = []


Speculative = Speculation  # how replies are drafted (`generation.Speculation`)


class ChatSession:
    """A conversation with a loaded model, whose KV cache (and the draft's) lives across turns."""

    def __init__(self, target: LoadedModel, conversation: Conversation | None = None,
                 speculative: Speculative | None = None) -> None:
        if not getattr(target.tokenizer, "chat_template", None):
            raise UsageError(f"chat: the tokenizer of {target.ref!r} has no chat template")
        self.target = target
        self.conversation = conversation or Conversation()
        self.speculative = speculative
        self.cache = ReusedCache(target.engine)
        draft = speculative.draft if speculative else None
        self.draft_cache = ReusedCache(draft.engine) if draft is not None else None

    @property
    def context_length(self) -> int:
        draft = self.speculative.draft if self.speculative else None
        return min(self.target.context_length, draft.context_length if draft else self.target.context_length)

    def prompt(self, config: DecodingConfig) -> tuple[list[int], int]:
        """The conversation's ids, after dropping the oldest turns that do not fit; and how many were dropped.

        Fits when len(ids) + max_new_tokens <= context; the newest message alone only has to leave room for one token.
        """
        alone = Conversation(self.conversation.system, self.conversation.messages[-1:])
        length = len(render(self.target.tokenizer, alone.full(), config.template_kwargs()))
        if length >= self.context_length:  # checked first, so that a refused message drops no turn
            raise PromptError(f"the message is {length} tokens with the system message and the template, but "
                              f"the model's context is {self.context_length} tokens")
        dropped = 0
        while True:
            ids = render(self.target.tokenizer, self.conversation.full(), config.template_kwargs())
            if len(ids) + config.max_new_tokens <= self.context_length:
                return ids, dropped
            if not self.conversation.drop_oldest_turn():
                return ids, dropped  # the newest message alone: fewer than max_new_tokens may be left
            dropped += 1

    def reply(self, config: DecodingConfig, on_text: OnText | None = None, seed_offset: int = 0,
              logprobs: LogprobSpec | None = None, on_round: Any = None,
              on_drop: Callable[[int], None] | None = None) -> SequenceResult:
        """Generate the assistant's reply to the conversation as it stands (ending with a user message).

        With a seed, the reply draws from `seed + seed_offset` (the CLI passes the turn index), so a turn
        and its `/retry` draw alike, and turn 1 equals `generate --seed S` on the same messages.
        Appends nothing to the conversation: the caller does, also with the partial text of an interruption.
        """
        ids, dropped = self.prompt(config)
        if dropped and on_drop is not None:
            on_drop(dropped)
        cached = self.cache.reuse(ids)
        seed = None if config.seed is None else config.seed + seed_offset
        if self.draft_cache is not None:
            self.draft_cache.reuse(ids)
        try:  # a constraint gets a fresh matcher per reply
            result = generate(self.target, ids, config, speculation=self.speculative,
                              generator=make_generator(seed, self.target.device), logprobs=logprobs, on_text=on_text,
                              on_round=on_round, lm=self.cache.lm, draft_lm=self.draft_cache.lm if self.draft_cache else None,
                              context_length=self.context_length)
        except BaseException:
            self.clear_caches()
            raise
        sequence = [*ids, *result.token_ids]
        self.cache.settle(sequence)
        if self.draft_cache is not None:
            self.draft_cache.settle(sequence)
        result.stats["cached_tokens"] = cached
        if dropped:
            result.stats["dropped_turns"] = dropped
        return result

    @property
    def turns(self) -> int:
        """Replies in the conversation so far."""
        return sum(m["role"] == "assistant" for m in self.conversation.messages)

    def send(self, text: str, config: DecodingConfig, on_text: OnText | None = None,
             logprobs: LogprobSpec | None = None, on_round: Any = None,
             on_drop: Callable[[int], None] | None = None) -> SequenceResult:
        """One turn: the user's message joins the conversation, and so does the reply to it.

        A turn that fails (a message too long for the context, an error inside the turn) leaves the
        conversation as it was, and raises. On Ctrl-C the reply keeps the text decided so far, and the
        KeyboardInterrupt goes on to the caller."""
        self.conversation.messages.append({"role": "user", "content": text})
        try:
            return self._answer(config, on_text, logprobs, on_round, on_drop)
        except KeyboardInterrupt:
            raise
        except BaseException:
            self.conversation.messages.pop()
            raise

    def retry(self, config: DecodingConfig, on_text: OnText | None = None, logprobs: LogprobSpec | None = None,
              on_round: Any = None, on_drop: Callable[[int], None] | None = None) -> SequenceResult:
        """The last reply generated again (with a seed, from the same stream as the first time). A failed
        retry puts the old reply back, and raises; on Ctrl-C the new partial reply stays."""
        messages = self.conversation.messages
        if not messages or messages[-1]["role"] != "assistant":
            raise UsageError("/retry: there is no reply to generate again")
        removed = messages.pop()
        try:
            return self._answer(config, on_text, logprobs, on_round, on_drop)
        except KeyboardInterrupt:
            raise
        except BaseException:
            messages.append(removed)
            raise

    def _answer(self, config: DecodingConfig, on_text: OnText | None, logprobs: LogprobSpec | None,
                on_round: Any, on_drop: Callable[[int], None] | None) -> SequenceResult:
        """The reply to the last user message, appended to the conversation (partial on Ctrl-C).
        Reply i (from 0) draws from seed + i."""
        pieces: list[str] = []

        def collect(piece: str, origin: str, logprob: Any = None) -> None:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece, origin, logprob)

        try:
            result = self.reply(config, collect, self.turns, logprobs, on_round, on_drop)
        except KeyboardInterrupt:
            self.conversation.messages.append({"role": "assistant", "content": "".join(pieces)})
            raise
        self.conversation.messages.append({"role": "assistant", "content": result.text})
        return result

    def clear_caches(self) -> None:
        self.cache.clear()
        if self.draft_cache is not None:
            self.draft_cache.clear()


def reference_reply(target: LoadedModel, messages: list[dict[str, str]], config: DecodingConfig) -> SequenceResult:
    """What `generate` does with the same messages: a fresh cache, the whole prompt prefilled (the tests' oracle)."""
    return generate(target, render(target.tokenizer, messages, config.template_kwargs()), config)
