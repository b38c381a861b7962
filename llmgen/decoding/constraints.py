"""Constrained output: a grammar, compiled once, and a matcher per sequence that yields the token mask.

The grammar-to-mask machinery is llguidance's (`pip install 'llmgen[constrained]'`): a JSON Schema, a
regex, a Lark or GBNF grammar, or a list of choices becomes one llguidance grammar (`Constraint`),
checked against the tokenizer before any decoding starts. Each sequence then owns a `Matcher`, the way
it owns its KV cache: it advances with every token the sequence takes and rolls back with it
(speculative decoding rolls back rejected draft tokens). Its `allowed()` mask `[vocab]` is applied by
the processor chain as its first stage (`processors.apply_mask`), before the penalties.

End-of-sequence is allowed exactly when the grammar is complete; a grammar that cannot go on allows
only end-of-sequence. Tokens after an end-of-sequence token (a speculative draft may hold some) are
not fed to llguidance: after the end, the mask is end-of-sequence only.

The options are the `DecodingConfig` fields `schema`, `json_object`, `regex`, `choice` and `grammar`
(one at a time), so presets and batched runs carry them like any other setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy
import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.errors import UsageError

INSTALL_HINT = "constrained output needs llguidance: pip install 'llmgen[constrained]'"
OPTIONS = ("schema", "json_object", "regex", "choice", "grammar")

# NOTE: compact JSON (no free whitespace between tokens): a small model left to choose whitespace can
# emit newlines until the budget runs out; the output parses the same either way.
_JSON_OPTIONS = {"whitespace_flexible": False}


class ConstraintError(UsageError):
    """A constraint that cannot be compiled or used: the message is one line."""


class Matcher(Protocol):
    """What decoding needs of a matcher: the mask of the next token, advance by one token, roll back."""

    def allowed(self) -> Tensor: ...  # [vocab] bool

    def advance(self, token: int) -> None: ...

    def rollback(self, count: int) -> None: ...


def requested(config: DecodingConfig) -> list[str]:
    """The constraint options set in `config`, as flags (`--regex`, ...)."""
    return ["--" + name.replace("_", "-") for name in OPTIONS if getattr(config, name) not in (None, False, ())]


def check_options(config: DecodingConfig) -> None:
    """One constraint at a time, not with --ignore-eos; llguidance installed. No model needed."""
    given = requested(config)
    if not given:
        return
    if len(given) > 1:
        raise ConstraintError(f"give one constraint at a time, not {' and '.join(given)}")
    if config.ignore_eos:
        raise ConstraintError(f"{given[0]} ends when the output is complete; drop --ignore-eos")
    _llguidance()
    grammar_text(config)  # a missing file or malformed JSON is reported before the model loads


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return llguidance


def grammar_text(config: DecodingConfig) -> str | None:
    """The llguidance grammar for the constraint in `config`, or None when there is none."""
    llg = _llguidance()
    if config.schema is not None:
        schema = _load_schema(config.schema)
        try:
            return llg.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        except ValueError as err:
            raise ConstraintError(f"--schema: {_one_line(str(err))}") from None
    if config.json_object:
        return llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if config.regex is not None:
        return llg.LLMatcher.grammar_from_regex(config.regex)
    if config.choice:
        return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in config.choice))
    if config.grammar is not None:
        path = Path(config.grammar)
        if not path.is_file():
            raise ConstraintError(f"--grammar: no such file: {config.grammar}")
        text = path.read_text(encoding="utf-8")
        kind = "gbnf" if path.suffix.lower() == ".gbnf" or "::=" in text else "lark"
        try:
            return llg.grammar_from(kind, text)
        except ValueError as err:
            raise ConstraintError(f"--grammar {path.name}: {_one_line(str(err))}") from None
    return None


def _load_schema(value: str) -> dict[str, Any]:
    """--schema: inline JSON (starting with '{'), or the path of a JSON file."""
    where = "--schema"
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise ConstraintError(f"--schema: no such file: {value}")
        where, text = f"--schema {path.name}", path.read_text(encoding="utf-8")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConstraintError(f"{where}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(schema, dict):
        raise ConstraintError(f"{where}: a JSON Schema is an object, not {type(schema).__name__}")
    return schema


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines)[:400]


@dataclass(frozen=True)
class Constraint:
    """A grammar compiled for one tokenizer; `matcher()` gives each sequence its own matcher."""

    grammar: str
    tokenizer: Any  # llguidance.LLTokenizer
    eos_token_ids: frozenset[int]
    width: int  # the logits' vocabulary width (may exceed the tokenizer's)

    def matcher(self) -> GrammarMatcher:
        return GrammarMatcher(self)


_TOKENIZERS: dict[tuple[int, tuple[int, ...]], Any] = {}
_COMPILED: dict[tuple[Any, ...], Constraint] = {}


def for_model(config: DecodingConfig, loaded: Any) -> Constraint | None:
    """`compile_constraint` for a `models.LoadedModel`, compiled once per model and constraint."""
    if not config.constrained:
        return None
    key = (id(loaded.tokenizer), loaded.eos_token_ids, loaded.vocab_size,
           *(getattr(config, name) for name in OPTIONS))
    if key not in _COMPILED:
        compiled = compile_constraint(config, loaded.tokenizer, loaded.eos_token_ids, loaded.vocab_size)
        assert compiled is not None  # config.constrained
        _COMPILED[key] = compiled
    return _COMPILED[key]


def new_matcher(config: DecodingConfig, loaded: Any) -> GrammarMatcher | None:
    """A fresh matcher for one sequence of `loaded`, or None without a constraint."""
    constraint = for_model(config, loaded)
    return None if constraint is None else constraint.matcher()


def compile_constraint(config: DecodingConfig, tokenizer: Any, eos_token_ids: frozenset[int],
                       width: int) -> Constraint | None:
    """The constraint of `config` for `tokenizer` (a Hugging Face fast tokenizer); None without one.

    Raises ConstraintError (one line) for a grammar llguidance refuses, and for one that no token of
    the vocabulary can start.
    """
    check_options(config)
    text = grammar_text(config)
    if text is None:
        return None
    llg = _llguidance()
    key = (id(tokenizer), tuple(sorted(eos_token_ids)))
    if key not in _TOKENIZERS:  # NOTE: building the token trie takes ~0.3 s for 49k tokens; once per tokenizer
        if hasattr(tokenizer, "llguidance_tokenizer"):  # a GGUF file's own vocabulary (the llama.cpp engine)
            _TOKENIZERS[key] = tokenizer.llguidance_tokenizer(sorted(eos_token_ids))
        else:
            import llguidance.hf

            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(eos_token_ids))
    lltok = _TOKENIZERS[key]
    flag = requested(config)[0]
    message = llg.LLMatcher.validate_grammar(text, lltok)
    if message:
        raise ConstraintError(f"{flag}: {_one_line(message)}")
    constraint = Constraint(text, lltok, frozenset(eos_token_ids), width)
    first = constraint.matcher().allowed()
    if not bool(first[[t for t in range(width) if t not in eos_token_ids]].any()):
        raise ConstraintError(f"{flag}: no token of the vocabulary can start the output")
    return constraint


class GrammarMatcher:
    """llguidance's `LLMatcher` for one sequence: `allowed()`, `advance(token)`, `rollback(count)`."""

    def __init__(self, constraint: Constraint) -> None:
        import llguidance

        self.constraint = constraint
        self._matcher = llguidance.LLMatcher(constraint.tokenizer, constraint.grammar, log_level=0)
        self._fed: list[bool] = []  # per token taken: True if llguidance read it (False at and after the end)
        self._eos_only = torch.zeros(constraint.width, dtype=torch.bool)
        self._eos_only[[t for t in constraint.eos_token_ids if t < constraint.width]] = True

    @property
    def ended(self) -> bool:
        return bool(self._fed) and not self._fed[-1]

    def allowed(self) -> Tensor:
        """The tokens that may come next, [vocab] bool."""
        if self.ended:
            return self._eos_only
        words = numpy.frombuffer(self._matcher.compute_bitmask(), dtype=numpy.uint8)
        bits = torch.from_numpy(numpy.unpackbits(words, bitorder="little")).view(torch.bool)  # token i is bit i
        width = self.constraint.width
        if bits.shape[0] < width:
            bits = torch.cat([bits, torch.zeros(width - bits.shape[0], dtype=torch.bool)])
        return bits[:width]

    def copy(self) -> GrammarMatcher:
        """An independent matcher in the same state (beam search forks one per beam)."""
        other = object.__new__(GrammarMatcher)
        other.constraint, other._eos_only = self.constraint, self._eos_only
        other._matcher = self._matcher.deep_copy()
        other._fed = list(self._fed)
        return other

    def forced(self) -> list[int]:
        """The tokens the grammar forces next (llguidance's fast-forward tokens); [] when none or ended."""
        return [] if self.ended else [int(t) for t in self._matcher.compute_ff_tokens()]

    def advance(self, token: int) -> None:
        """Take one token (end-of-sequence ends the grammar; later tokens are only counted)."""
        if self.ended or token in self.constraint.eos_token_ids:
            self._fed.append(False)
            return
        if not self._matcher.consume_token(int(token)):
            raise ConstraintError(f"the grammar does not allow token {token}: "
                                  f"{_one_line(self._matcher.get_error())[:200]}")
        self._fed.append(True)

    def rollback(self, count: int) -> None:
        """Forget the last `count` tokens."""
        if count <= 0:
            return
        undone = self._fed[-count:]
        del self._fed[-count:]
        fed = sum(undone)
        if fed and not self._matcher.rollback(fed):
            raise RuntimeError(f"llguidance could not roll back {fed} tokens: {self._matcher.get_error()}")


def warn_incomplete(config: DecodingConfig, finish_reason: str) -> None:
    """One line on stderr when the token budget ended a constrained output before it was complete."""
    if config.constrained and finish_reason == "length":
        import sys

        print(f"llmgen: warning: {requested(config)[0]}: max_new_tokens ran out before the output was complete; "
              "it may not parse", file=sys.stderr, flush=True)
