"""Audit a server: send the requests, map the answers back to cells, and test them (`audit.py`).

Mapping back. With k = 1 the cells are *texts*: each token's text after the prompt (decoded after the
prompt's last token, special tokens dropped), end-of-sequence tokens as one cell "<eos>", so that
tokens that print the same are one cell (a coarsening keeps the test exact). An answer whose text is
no token's text is a vocabulary mismatch. With k > 1 the cells are token ids: the server's own
`token_ids` when it gives them, else prompt + text re-tokenized, which must extend the prompt's ids by
as many tokens as the server counted; else (a character split across byte tokens prints as U+FFFD)
the likeliest sequence of at most k of the claim's likeliest tokens that decodes to the text.
When the server reports `usage`, its prompt length and completion length must agree with the audit's
tokenizer; if they do not, the vocabularies differ and the audit refuses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError
from llmgen.evaluate import client
from llmgen.evaluate.audit import (
    ExpectedOf,
    Explanation,
    Verdict,
    audit_samples,
    explain,
    grouped,
    hidden_defaults,
    needed_samples,
)
from llmgen.evaluate.distribution import ContextLogits, exact_distribution

EOS = "<eos>"


class VocabularyMismatch(UsageError):
    """The server's tokens are not the audit model's."""


def token_keys(tokenizer: Any, prompt_ids: Sequence[int], vocab: int, eos_ids: frozenset[int],
               by_text: bool) -> list[Hashable]:
    """The cell of every token id: its text after the prompt (by_text) or the id itself; EOS for end tokens."""
    if not by_text:
        return [EOS if t in eos_ids else t for t in range(vocab)]
    anchor = int(prompt_ids[-1])
    base = tokenizer.decode([anchor], skip_special_tokens=True)
    known = min(vocab, len(tokenizer))
    texts = tokenizer.batch_decode([[anchor, t] for t in range(known)], skip_special_tokens=True)
    keys: list[Hashable] = [text[len(base):] if text.startswith(base) else text for text in texts]
    keys += [f"<id {t}>" for t in range(known, vocab)]  # padding rows of the lm-head: no text
    for t in eos_ids:
        if t < vocab:
            keys[t] = EOS
    return keys


def expected_under(logits_of: ContextLogits, prompt_ids: Sequence[int], config: DecodingConfig,
                   keys: list[Hashable]) -> ExpectedOf:
    def expected(prefix: tuple) -> dict[Hashable, float]:
        return grouped(exact_distribution(logits_of, prompt_ids, list(prefix), config), keys)

    return expected


@dataclass(frozen=True)
class Report:
    verdict: Verdict
    explanation: Explanation | None
    first_counts: Counter
    fields: dict[str, Any]  # what each request carried


def check_enough(n: int, expected: Mapping[Hashable, float]) -> None:
    needed = needed_samples(expected)
    if n < needed:
        raise UsageError(f"-n {n} is too few for the test to say anything about this claim: it needs at least "
                         f"{needed} samples (an expected count of 5 in the most likely cell and in the rest)")


SEARCH_WIDTH = 64  # tokens tried per position when a completion does not re-tokenize as the server counted it


def _retokenized(completion: client.Completion, tokenizer: Any, prompt: str, prompt_ids: list[int],
                 stopped: bool) -> list[int] | None:
    """prompt + completion re-tokenized, if that extends the prompt's ids by as many tokens as the server counted."""
    full = [int(i) for i in tokenizer(prompt + completion.text)["input_ids"]]
    if full[:len(prompt_ids)] != prompt_ids or "\ufffd" in completion.text:
        return None
    ids = full[len(prompt_ids):]
    counted = completion.completion_tokens
    if counted is not None and counted != len(ids) and not (stopped and counted == len(ids) + 1):
        return None
    return ids


def _searched(text: str, tokenizer: Any, k: int, candidates: Callable[[tuple], list[int]],
              length: int | None) -> list[int] | None:
    """The most likely token sequence (depth first, the claim's SEARCH_WIDTH likeliest tokens at each
    position) of at most k tokens that decodes to `text`, as a server decodes its completion. For texts
    that do not re-tokenize back (a character split across byte tokens prints as U+FFFD). With the server's
    count of completion tokens (`length`), only sequences of that length match."""

    def walk(prefix: tuple) -> list[int] | None:
        decoded = tokenizer.decode(list(prefix)) if prefix else ""
        if prefix and decoded == text and length in (None, len(prefix)):
            return list(prefix)
        if len(prefix) >= k or not text.startswith(decoded.rstrip("\ufffd")):
            return None
        for token in candidates(prefix)[:SEARCH_WIDTH]:
            found = walk((*prefix, token))
            if found is not None:
                return found
        return None

    return walk(())


def map_completion(completion: client.Completion, tokenizer: Any, prompt: str, prompt_ids: list[int], k: int,
                   keys: list[Hashable], text_keys: set[Hashable] | None, eos_ids: frozenset[int],
                   model: str, candidates: Callable[[tuple], list[int]] | None = None) -> tuple:
    if completion.prompt_tokens is not None and completion.prompt_tokens != len(prompt_ids):
        raise VocabularyMismatch(f"the server read the prompt as {completion.prompt_tokens} tokens and {model!r} as "
                                 f"{len(prompt_ids)}: a different vocabulary or tokenizer (give the server's model "
                                 "with --model)")
    stopped = completion.finish_reason == "stop"
    if text_keys is not None:  # k = 1, cells are texts
        if completion.token_ids:
            return (keys[completion.token_ids[0]],)
        if completion.text == "" and stopped:
            return (EOS,)
        if completion.text not in text_keys:
            raise VocabularyMismatch(f"the server's completion {completion.text!r} is no single token of {model!r} "
                                     "after this prompt: a different vocabulary (give the server's model with --model)")
        return (completion.text,)
    ids = completion.token_ids
    if ids is None:
        ids = _retokenized(completion, tokenizer, prompt, prompt_ids, stopped)
        if ids is None and candidates is not None:
            ids = _searched(completion.text, tokenizer, k, candidates, completion.completion_tokens)
        if ids is None:
            raise VocabularyMismatch(f"the completion {completion.text!r} maps to no {k} tokens or fewer of {model!r} "
                                     "after this prompt: a different vocabulary (or a tokenization llmgen cannot "
                                     "recover)")
    cells = []
    for token in ids[:k]:
        cells.append(keys[token] if token < len(keys) else token)
        if cells[-1] == EOS:
            break
    if stopped and len(cells) < k and (not cells or cells[-1] != EOS):
        cells.append(EOS)
    return tuple(cells)


def audit_server(url: str, server_model: str | None, prompt: str, prompt_ids: list[int], tokenizer: Any,
                 eos_ids: frozenset[int], logits_of: ContextLogits, claim: DecodingConfig, claimed: dict[str, Any],
                 n: int, k: int, alpha: float, seed: int | None, model: str,
                 on_sample: Callable[[int], None] | None = None) -> Report:
    vocab = int(logits_of(prompt_ids).shape[-1])
    by_text = k == 1
    keys = token_keys(tokenizer, prompt_ids, vocab, eos_ids, by_text)
    expected_of = expected_under(logits_of, prompt_ids, claim, keys)
    check_enough(n, expected_of(()))
    fields = client.request_fields(claimed, claim)
    endpoint = client.completions_url(url)
    text_keys = set(keys) if by_text else None

    def candidates(prefix: tuple) -> list[int]:  # the claim's likeliest tokens after prompt + prefix
        probs = exact_distribution(logits_of, prompt_ids, list(prefix), claim)
        return [int(t) for t in probs.topk(min(SEARCH_WIDTH, int((probs > 0).sum()))).indices]

    samples = []
    for i in range(n):
        request = {**fields, **({"seed": seed + i} if seed is not None else {})}
        completion = client.complete(endpoint, server_model, prompt, k, request)
        samples.append(map_completion(completion, tokenizer, prompt, prompt_ids, k, keys, text_keys, eos_ids, model,
                                      candidates))
        if on_sample:
            on_sample(i + 1)
    return test_and_explain(samples, logits_of, prompt_ids, claim, keys, alpha, fields)


def test_and_explain(samples: list[tuple], logits_of: ContextLogits, prompt_ids: Sequence[int],
                     claim: DecodingConfig, keys: list[Hashable], alpha: float,
                     fields: dict[str, Any] | None = None) -> Report:
    verdict = audit_samples(samples, expected_under(logits_of, prompt_ids, claim, keys), alpha)
    first = Counter(s[0] for s in samples if s)
    explanation = None
    if verdict.rejected:
        claimed = expected_under(logits_of, prompt_ids, claim, keys)(())
        candidates = [(name, config, expected_under(logits_of, prompt_ids, config, keys)(()))
                      for name, config in hidden_defaults(claim)]
        explanation = explain(first, claimed, candidates)
    return Report(verdict, explanation, first, fields or {})
