"""The decoding configuration: one frozen, validated dataclass, and the merge of its sources.

Precedence, lowest first: built-in defaults < preset < flags given explicitly on the command line.
Every field carries its help text in its metadata, so `--help`, `--dump-config`, presets and the
README all describe the same thing.

`temperature = 0` means greedy. That decision is made here, in `DecodingConfig.greedy`, and nowhere
else: the sampler never divides by a tiny temperature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from llmgen.errors import ConfigError

GREEDY_BELOW = 1e-5

PenaltyScope = Literal["generated", "all"]
EarlyStopping = Literal["false", "true", "never"]


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DecodingConfig:
    """Every option that shapes how tokens are picked. Values are validated in `__post_init__`."""

    temperature: float = _opt(1.0, "Softmax temperature; 0 (or below 1e-5) means greedy (argmax).")
    top_k: int = _opt(0, "Keep only the K most likely tokens; 0 = off.")
    top_p: float = _opt(1.0, "Nucleus: keep the smallest set of tokens whose probability reaches P; 1.0 = off.")
    min_p: float = _opt(0.0, "Drop tokens whose probability is below P times the top token's; 0 = off.")
    frequency_penalty: float = _opt(0.0, "OpenAI frequency penalty in [-2, 2]: logit -= count * F; 0 = off.")
    presence_penalty: float = _opt(0.0, "OpenAI presence penalty in [-2, 2]: logit -= P if count > 0; 0 = off.")
    repetition_penalty: float = _opt(
        1.0, "HF/CTRL repetition penalty in [0.001, 1000]: seen tokens' positive logits / R, negative * R; 1.0 = off."
    )
    penalty_scope: PenaltyScope = _opt(
        "generated", "Tokens the penalties count: 'generated' (output only) or 'all' (prompt too)."
    )
    penalty_window: int = _opt(0, "Count only the last N tokens of the penalty scope; 0 = the whole scope.")
    max_new_tokens: int = _opt(256, "Stop after this many generated tokens.")
    stop: tuple[str, ...] = _opt((), "Stop strings; generation ends when the text contains one (it is not printed).")
    ignore_eos: bool = _opt(False, "Keep generating past the end-of-sequence token.")
    seed: int | None = _opt(None, "Random seed for sampling; the same seed gives the same output.")
    n: int = _opt(1, "Number of sequences to return.")
    num_beams: int = _opt(1, "Beam search with B beams; 1 = off.")
    length_penalty: float = _opt(1.0, "Beam score = sum of log-probs / length ** L.")
    early_stopping: EarlyStopping = _opt("false", "Beam search stopping rule, as in HF: false, true or never.")
    no_repeat_ngram_size: int = _opt(0, "Forbid repeating any n-gram of this size; 0 = off.")
    schema: str | None = _opt(None, "Output valid JSON for this JSON Schema: a file, or the schema itself ('{...}').")
    json_object: bool = _opt(False, "Output one JSON object (any keys).")
    regex: str | None = _opt(None, "The whole output matches this regular expression (Rust regex syntax).")
    choice: tuple[str, ...] = _opt((), "The output is exactly one of these strings (repeat the option).")
    grammar: str | None = _opt(None, "The output follows this grammar file: Lark (llguidance's dialect) or GBNF (.gbnf).")

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0 (0 means greedy)")
        _check(self.top_k >= 0, "top_k", self.top_k, "must be >= 0 (0 = off)")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1] (1.0 = off)")
        _check(0 <= self.min_p <= 1, "min_p", self.min_p, "must be in [0, 1] (0 = off)")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _check(-2 <= value <= 2, name, value, "must be in [-2, 2]")
        _check(1e-3 <= self.repetition_penalty <= 1e3, "repetition_penalty", self.repetition_penalty,
               "must be in [0.001, 1000] (1.0 = off)")
        _check(self.penalty_scope in ("generated", "all"), "penalty_scope", self.penalty_scope,
               "must be 'generated' or 'all'")
        _check(self.penalty_window >= 0, "penalty_window", self.penalty_window, "must be >= 0 (0 = whole scope)")
        _check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "must be >= 1")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "must be non-empty strings")
        _check(self.n >= 1, "n", self.n, "must be >= 1")
        _check(self.num_beams >= 1, "num_beams", self.num_beams, "must be >= 1 (1 = off)")
        _check(self.early_stopping in ("false", "true", "never"), "early_stopping", self.early_stopping,
               "must be 'false', 'true' or 'never'")
        _check(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", self.no_repeat_ngram_size,
               "must be >= 0 (0 = off)")

    @property
    def greedy(self) -> bool:
        """The one place that decides greedy decoding: temperature 0.

        NOTE: temperatures below 1e-5 count as 0, as in vLLM: logits / 1e-40 would overflow float32 to
        inf and the softmax to NaN, while the limit of sampling as T -> 0 is the argmax anyway.
        """
        return self.temperature < GREEDY_BELOW

    @property
    def constrained(self) -> bool:
        """Any of --schema, --json-object, --regex, --choice, --grammar (`constraints.py`)."""
        return bool(self.schema or self.json_object or self.regex or self.choice or self.grammar)

    @property
    def uses_penalties(self) -> bool:
        return (self.frequency_penalty != 0 or self.presence_penalty != 0
                or self.repetition_penalty != 1.0)

    def replace(self, **changes: Any) -> DecodingConfig:
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} {why}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(DecodingConfig)}
DEFAULTS = DecodingConfig()

# Alternative spellings accepted in presets (dashes are always accepted for underscores).
ALIASES = {"num_return_sequences": "n"}


def canonical_key(key: str) -> str | None:
    """Map a preset or flag key to a DecodingConfig field name, or None if unknown."""
    name = key.replace("-", "_")
    name = ALIASES.get(name, name)
    return name if name in FIELDS else None


def parse_keys(keys: Mapping[str, Any]) -> dict[str, Any]:
    """Decoding keys, as presets, `--input` rows, chat's `/set` and the flags spell them -> field values.

    The one parser of them all: dashes stand for underscores, `ALIASES` are accepted, `greedy = true` is
    `temperature = 0` (false sets nothing), and each value is checked against its field's type
    (`coerce`). Raises ConfigError naming the key; the key is also its `key` attribute, so that a
    preset can say on which line it stands. Range checks are `DecodingConfig`'s own.
    """
    values: dict[str, Any] = {}
    for key, value in keys.items():
        try:
            if key.replace("-", "_") == "greedy":
                if not isinstance(value, bool):
                    raise ConfigError(f"invalid value for greedy: {value!r} must be true or false")
                if value:
                    values["temperature"] = 0.0
                continue
            name = canonical_key(key)
            if name is None:
                raise ConfigError(f"unknown key {key!r}")
            values[name] = coerce(name, value)
        except ConfigError as err:
            err.key = key  # type: ignore[attr-defined]
            raise
    return values


def coerce(name: str, value: Any) -> Any:
    """Check a raw value's type against the field's declared type; return the value to store.

    Raises ConfigError with the expected type. Ints are accepted for floats; bools never count as numbers.
    """
    default = getattr(DEFAULTS, name)
    kind = FIELDS[name].type
    if name == "stop":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"invalid value for stop: {value!r} must be a string or a list of strings")
    if name == "choice":
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ConfigError(f"invalid value for choice: {value!r} must be a list of non-empty strings")
    if name in ("schema", "regex", "grammar"):
        if isinstance(value, str) and value:
            return value
        if name == "schema" and isinstance(value, dict):  # a preset may hold the schema as a table
            import json

            return json.dumps(value)
        raise ConfigError(f"invalid value for {name}: {value!r} must be a non-empty string")
    if name == "seed":
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"invalid value for seed: {value!r} must be an integer")
    if name == "early_stopping" and isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} must be true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} must be an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} must be a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"invalid value for {name.replace('_', '-')}: {value!r} must be a string ({kind})")
    return value


@dataclass(frozen=True)
class Resolved:
    """A config together with where each value came from: 'default', 'preset <name>' or 'flag'."""

    config: DecodingConfig
    sources: Mapping[str, str]


def resolve(preset: Mapping[str, Any] | None, preset_name: str | None,
            flags: Mapping[str, Any]) -> Resolved:
    """Merge defaults < preset < explicit flags. `flags` holds only the flags the user gave."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in FIELDS}
    for layer, label in ((preset or {}, f"preset {preset_name}"), (flags, "flag")):
        for name, value in parse_keys(layer).items():
            values[name] = value
            sources[name] = label
    return Resolved(DecodingConfig(**values), sources)
