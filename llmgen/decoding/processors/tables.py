"""`TokenTables` from a tokenizer: built once per run, for the stages that need token ids of text.

- stop ids: the model's end-of-sequence ids and --stop-token-id (min tokens bans them).
- bad words: vLLM's `update_from_tokenizer`: each word is tokenized as written (leading spaces
  stripped) and with one leading space; the second form is kept when it is a different word of the
  same length (it starts with another token).
- DRY's sequence breakers: llama.cpp's (from koboldcpp) `get_overlapping_token_sequences`: a token
  whose text contains the breaker is a breaker alone; a token whose text ends with the start of the
  breaker is a head, and the tokenization of the rest of the breaker is its tail (at most 20 tokens;
  breakers are cut to 40 characters).
- thinking tags: "<think>" and "</think>" as token ids, for the reasoning budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import TokenTables
from llmgen.errors import UsageError

MAX_BREAKER_CHARS = 40
MAX_BREAKER_TAIL = 20
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def needs_tables(config: DecodingConfig) -> bool:
    return bool(config.uses_token_controls or config.dry_multiplier > 0)


def build_tables(config: DecodingConfig, tokenizer: Any, eos_token_ids: Iterable[int],
                 vocab_size: int | None = None) -> TokenTables | None:
    """The tables `config` needs from `tokenizer`; None when no stage needs any. Checks the token ids
    of --logit-bias, --stop-token-id and --allowed-token-id against the vocabulary."""
    size = vocab_size or len(tokenizer)
    for name, ids in (("logit-bias", [t for t, _ in config.logit_bias]), ("stop-token-id", config.stop_token_ids),
                      ("allowed-token-id", config.allowed_token_ids)):
        unknown = [t for t in ids if t >= size]
        if unknown:
            raise UsageError(f"--{name}: unknown token id {unknown[0]} (the vocabulary has {size} tokens)")
    if not needs_tables(config) and not config.stop_token_ids:
        return None
    encode = _encoder(tokenizer)
    bad_words: list[tuple[int, ...]] = []
    for word in config.bad_words:
        plain = tuple(encode(word.lstrip()))
        spaced = tuple(encode(" " + word.lstrip()))
        if plain:
            bad_words.append(plain)
        if spaced and (not plain or (spaced[0] != plain[0] and len(spaced) == len(plain))):
            bad_words.append(spaced)
    breakers = dry_breakers(tokenizer, config.dry_sequence_breakers, size) if config.dry_multiplier > 0 else {}
    think_open = think_close = ()
    if config.reasoning_budget >= 0:
        think_open, think_close = tuple(encode(THINK_OPEN)), tuple(encode(THINK_CLOSE))
        if not think_open or not think_close:
            raise UsageError("--reasoning-budget: the tokenizer cannot write <think> and </think>")
    return TokenTables(size, frozenset(eos_token_ids) | frozenset(config.stop_token_ids), tuple(bad_words),
                       breakers, think_open, think_close)


_CACHE: dict[tuple, TokenTables | None] = {}


def tables_for(config: DecodingConfig, tokenizer: Any, eos_token_ids: Iterable[int]) -> TokenTables | None:
    """`build_tables`, kept per tokenizer and settings: rows of a batch with the same settings share one."""
    key = (id(tokenizer), frozenset(eos_token_ids), config.logit_bias, config.stop_token_ids, config.allowed_token_ids,
           config.bad_words, config.dry_multiplier > 0 and config.dry_sequence_breakers, config.reasoning_budget >= 0,
           needs_tables(config))
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = build_tables(config, tokenizer, eos_token_ids)
    return _CACHE[key]


def _encoder(tokenizer: Any):
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return encode


def dry_breakers(tokenizer: Any, breakers: Iterable[str], vocab_size: int) -> dict[int, tuple[tuple[int, ...], ...]]:
    """head token -> tails (llama.cpp's processed breakers; an empty tail: the head alone is a breaker)."""
    texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], skip_special_tokens=False)
    encode = _encoder(tokenizer)
    out: dict[int, list[tuple[int, ...]]] = {}
    for breaker in breakers:
        breaker = breaker[:MAX_BREAKER_CHARS]
        for token, word in enumerate(texts):
            if breaker in word:
                _add(out, token, ())
                continue
            pos = word.find(breaker[0])
            while pos != -1:
                matched = 1
                while matched < len(breaker) and pos + matched < len(word) and word[pos + matched] == breaker[matched]:
                    matched += 1
                if pos + matched == len(word):  # the word ends with the breaker's first `matched` characters
                    _add(out, token, tuple(encode(breaker[matched:]))[:MAX_BREAKER_TAIL])
                pos = word.find(breaker[0], pos + 1)
    return {token: tuple(tails) for token, tails in out.items()}


def _add(out: dict[int, list[tuple[int, ...]]], token: int, tail: tuple[int, ...]) -> None:
    tails = out.setdefault(token, [])
    if tail not in tails:
        tails.append(tail)
