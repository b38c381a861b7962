"""The decoding configuration: one frozen, validated dataclass, and the merge of its sources.

Precedence, lowest first: built-in defaults < preset < flags given explicitly on the command line.
Every field carries its help text in its metadata, so `--help`, `--dump-config`, presets and the
README all describe the same thing.

`temperature = 0` means greedy. That decision is made here, in `DecodingConfig.greedy`, and nowhere
else: the sampler never divides by a tiny temperature.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# The stages after the mask, their orders, warpers and aliases: from the records (`processors/registry.py`).
from llmgen.decoding.processors.registry import (
    BY_NAME,
    DEFAULT_ORDER,
    LLAMACPP_ORDER,  # noqa: F401  (re-exported: tests and the CLI read it here)
    NAMED_ORDERS,
    STAGE_ALIASES,
    STAGE_NAMES,
    STAGES,
    WARPERS,
    Stage,
)
from llmgen.errors import ConfigError

GREEDY_BELOW = 1e-5

PenaltyScope = Literal["generated", "all"]

DRY_BREAKERS = ("\n", ":", '"', "*")
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
    # Token controls: the mask stage, before the penalties, as vLLM applies them.
    logit_bias: tuple[tuple[int, float], ...] = _opt(
        (), "Add BIAS (in [-100, 100]) to token ID's logit, OpenAI's logit_bias; repeat the option; none = off.")
    min_tokens: int = _opt(0, "End-of-sequence and stop tokens cannot be drawn, and stop strings do not end the "
                              "output, before N tokens; 0 = off.")
    stop_token_ids: tuple[int, ...] = _opt((), "Also end the output at this token id (repeat the option).")
    bad_words: tuple[str, ...] = _opt(
        (), "Never write this word: its last token is banned wherever the tokens before it end the output "
            "(with and without a leading space, as vLLM's bad_words); repeat the option.")
    allowed_token_ids: tuple[int, ...] = _opt((), "Only these token ids can be drawn (repeat the option); none = all.")
    # Truncation and shaping stages beyond HF's defaults.
    typical_p: float = _opt(1.0, "Locally typical sampling (HF's typical_p): keep the tokens closest to the "
                                 "entropy until their mass reaches P; 1.0 = off.")
    epsilon_cutoff: float = _opt(0.0, "Drop tokens whose probability is below E (HF's epsilon_cutoff); 0 = off.")
    eta_cutoff: float = _opt(0.0, "Drop tokens below min(E, sqrt(E) * exp(-entropy)) (HF's eta_cutoff); 0 = off.")
    top_n_sigma: float = _opt(0.0, "Keep the tokens whose logit is >= max - N * std of the logits (llama.cpp); "
                                   "0 = off.")
    dry_multiplier: float = _opt(0.0, "DRY: penalise tokens that extend a repetition by M * base ** (length - "
                                      "allowed length); 0 = off.")
    dry_base: float = _opt(1.75, "DRY: the base of the penalty's exponential growth (>= 1).")
    dry_allowed_length: int = _opt(2, "DRY: repetitions up to this many tokens are not penalised.")
    dry_penalty_last_n: int = _opt(-1, "DRY: look back over the last N tokens of the context; -1 = all of it.")
    dry_sequence_breakers: tuple[str, ...] = _opt(
        DRY_BREAKERS, "DRY: a repetition does not continue across this string (repeat the option to replace "
                      "the defaults).")
    xtc_probability: float = _opt(0.0, "XTC: with probability P, remove every token at or above the threshold but "
                                       "the least likely of them; 0 = off.")
    xtc_threshold: float = _opt(0.1, "XTC: the probability threshold.")
    mirostat: int = _opt(0, "Mirostat: 2 = v2 (keeps the surprise near tau); 0 = off.")
    mirostat_tau: float = _opt(5.0, "Mirostat: the target surprise, in bits.")
    mirostat_eta: float = _opt(0.1, "Mirostat: the learning rate of mu.")
    dynatemp_range: float = _opt(0.0, "Dynamic temperature: T moves in [T - R, T + R] with the entropy "
                                      "(llama.cpp's temp_ext); 0 = off.")
    dynatemp_exp: float = _opt(1.0, "Dynamic temperature: the exponent of the normalised entropy.")
    samplers: tuple[str, ...] = _opt(
        DEFAULT_ORDER, "The order of the stages after the mask, ';'-separated (llama.cpp's --samplers), or a "
                       "named order: default, llama.cpp. A stage left out does not run.")
    # Reasoning controls.
    chat_template_kwargs: tuple[str, ...] = _opt(
        (), "KEY=VALUE passed to the chat template (VALUE read as JSON if it parses, else a string), "
            "e.g. enable_thinking=false; repeat the option.")
    reasoning_budget: int = _opt(-1, "After N tokens of reasoning (inside the think tags), the closing tag is forced; "
                                     "-1 = off.")

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
        self._check_samplers()

    def _check_samplers(self) -> None:
        """The stages beyond HF's: each value's range, and that a stage turned on is in `samplers`."""
        for token, bias in self.logit_bias:
            _check(token >= 0, "logit_bias", f"{token}={bias}", "needs a token id >= 0")
            _check(-100 <= bias <= 100, "logit_bias", f"{token}={bias}", "needs a bias in [-100, 100]")
        _check(self.min_tokens >= 0, "min_tokens", self.min_tokens, "must be >= 0 (0 = off)")
        for name in ("stop_token_ids", "allowed_token_ids"):
            _check(all(t >= 0 for t in getattr(self, name)), name, getattr(self, name), "must be token ids >= 0")
        _check(all(isinstance(w, str) and w.strip() for w in self.bad_words), "bad_words", self.bad_words,
               "must be non-empty words")
        _check(0 < self.typical_p <= 1, "typical_p", self.typical_p, "must be in (0, 1] (1.0 = off)")
        _check(0 <= self.epsilon_cutoff < 1, "epsilon_cutoff", self.epsilon_cutoff, "must be in [0, 1) (0 = off)")
        _check(0 <= self.eta_cutoff < 1, "eta_cutoff", self.eta_cutoff, "must be in [0, 1) (0 = off)")
        _check(self.top_n_sigma >= 0, "top_n_sigma", self.top_n_sigma, "must be >= 0 (0 = off)")
        _check(self.dry_multiplier >= 0, "dry_multiplier", self.dry_multiplier, "must be >= 0 (0 = off)")
        _check(self.dry_base >= 1, "dry_base", self.dry_base, "must be >= 1")
        _check(self.dry_allowed_length >= 1, "dry_allowed_length", self.dry_allowed_length, "must be >= 1")
        _check(self.dry_penalty_last_n >= -1, "dry_penalty_last_n", self.dry_penalty_last_n,
               "must be >= -1 (-1 = the whole context)")
        _check(all(isinstance(b, str) and b for b in self.dry_sequence_breakers), "dry_sequence_breaker",
               self.dry_sequence_breakers, "must be non-empty strings")
        _check(0 <= self.xtc_probability <= 1, "xtc_probability", self.xtc_probability, "must be in [0, 1] (0 = off)")
        _check(0 <= self.xtc_threshold <= 1, "xtc_threshold", self.xtc_threshold, "must be in [0, 1]")
        _check(self.mirostat != 1, "mirostat", self.mirostat, "is not supported: only Mirostat v2 is (--mirostat 2)")
        _check(self.mirostat in (0, 2), "mirostat", self.mirostat, "must be 0 (off) or 2 (Mirostat v2)")
        _check(self.mirostat_tau > 0, "mirostat_tau", self.mirostat_tau, "must be > 0")
        _check(self.mirostat_eta > 0, "mirostat_eta", self.mirostat_eta, "must be > 0")
        _check(self.dynatemp_range >= 0, "dynatemp_range", self.dynatemp_range, "must be >= 0 (0 = off)")
        _check(self.dynatemp_exp > 0, "dynatemp_exp", self.dynatemp_exp, "must be > 0")
        for item in self.chat_template_kwargs:
            _check(isinstance(item, str) and "=" in item and item.split("=", 1)[0].strip() != "",
                   "chat_template_kwarg", item, "must be KEY=VALUE")
        _check(self.reasoning_budget >= -1, "reasoning_budget", self.reasoning_budget, "must be >= -1 (-1 = off)")
        unknown = [s for s in self.samplers if s not in STAGE_NAMES]
        _check(not unknown, "samplers", ";".join(self.samplers),
               f"names an unknown stage {unknown[0] if unknown else ''!r} (stages: {', '.join(STAGE_NAMES)})")
        twice = [s for i, s in enumerate(self.samplers) if s in self.samplers[:i]]
        _check(not twice, "samplers", ";".join(self.samplers), f"names {twice[0] if twice else ''!r} twice")
        for stage, on in self.stages_on.items():
            on = on and not (self.greedy and stage in WARPERS)  # greedy runs no warper: nothing is left out
            _check(not on or stage in self.samplers, "samplers", ";".join(self.samplers),
                   f"leaves out {stage!r}, which the settings turn on")

    @functools.cached_property
    def stages_on(self) -> dict[str, bool]:
        """Which stages of STAGE_NAMES the values turn on (before the greedy rule). Computed once."""
        return {stage.name: stage.on(self) for stage in STAGES}

    def runs(self, stage: str) -> bool:
        """Whether the stage named `stage` runs: on, in `samplers`, and not a warper in greedy mode."""
        return stage in self.samplers and BY_NAME[stage].runs(self)

    @property
    def uses_token_controls(self) -> bool:
        """Any of logit bias, min tokens, bad words, allowed token ids, a reasoning budget (the mask stage)."""
        return bool(self.logit_bias or self.min_tokens or self.bad_words or self.allowed_token_ids
                    or self.reasoning_budget >= 0)

    @functools.cached_property
    def needs_context(self) -> bool:
        """Stages that read the tokens themselves (not just their counts): token controls, DRY, Mirostat."""
        return self.uses_token_controls or any(s.reads_history and s.runs(self) for s in STAGES)

    def template_kwargs(self) -> dict[str, Any]:
        """chat_template_kwargs as a dict; each VALUE is JSON when it parses (false, 3, "x"), else the string."""
        import json

        out: dict[str, Any] = {}
        for item in self.chat_template_kwargs:
            key, value = item.split("=", 1)
            try:
                out[key.strip()] = json.loads(value)
            except ValueError:
                out[key.strip()] = value
        return out

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
        return self.stages_on["penalties"]

    def replace(self, **changes: Any) -> DecodingConfig:
        return dataclasses.replace(self, **changes)


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError.invalid(name, f"{value!r} {why}")


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(DecodingConfig)}
DEFAULTS = DecodingConfig()

# Alternative spellings accepted in presets (dashes are always accepted for underscores).
ALIASES = {"num_return_sequences": "n", "bad_word": "bad_words", "stop_token_id": "stop_token_ids",
           "allowed_token_id": "allowed_token_ids", "dry_sequence_breaker": "dry_sequence_breakers",
           "chat_template_kwarg": "chat_template_kwargs", "typical": "typical_p"}

# The mask stage's settings (it is no `Stage` record: it always runs first).
MASK_FIELDS = ("logit_bias", "min_tokens", "stop_token_ids", "bad_words", "allowed_token_ids", "reasoning_budget")

# The name an OpenAI-compatible request gives a field where it is not the field's own: llama-server's
# (`tools/server`). `llmgen serve` reads requests with these names, and `llmgen audit` sends them.
REQUEST_NAMES = {"dynatemp_exp": "dynatemp_exponent"}

# Fields that hold a list of values (a flag repeated, a TOML array); each coerced by `_coerce_list`.
LIST_FIELDS = ("stop", "choice", "logit_bias", "stop_token_ids", "bad_words", "allowed_token_ids",
               "dry_sequence_breakers", "samplers", "chat_template_kwargs")


def stage_options(stage: Stage) -> list[tuple[str, Any, str]]:
    """A stage's settings as command-line flags, its switches first: (flag, default, help). What the
    CLI's option groups, the inspect panel and the docs table can be derived from."""
    flag = {field: alias for alias, field in ALIASES.items() if field in LIST_FIELDS}  # a list's singular flag
    return [(f"--{flag.get(name, name).replace('_', '-')}", getattr(DEFAULTS, name), FIELDS[name].metadata["help"])
            for name in (*stage.switches, *stage.params)]


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
                    raise ConfigError.invalid("greedy", f"{value!r} must be true or false")
                if value:
                    values["temperature"] = 0.0
                continue
            name = canonical_key(key)
            if name is None:
                raise ConfigError(f"unknown key {key!r}")
            values[name] = coerce(name, value)
        except ConfigError as err:
            err.key = key
            raise
    return values


def coerce(name: str, value: Any) -> Any:
    """Check a raw value's type against the field's declared type; return the value to store.

    Raises ConfigError with the expected type. Ints are accepted for floats; bools never count as numbers.
    """
    default = getattr(DEFAULTS, name)
    kind = FIELDS[name].type
    if name in LIST_FIELDS[2:]:
        return _coerce_list(name, value)
    if name == "stop":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError.invalid("stop", f"{value!r} must be a string or a list of strings")
    if name == "choice":
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ConfigError.invalid("choice", f"{value!r} must be a list of non-empty strings")
    if name in ("schema", "regex", "grammar"):
        if isinstance(value, str) and value:
            return value
        if name == "schema" and isinstance(value, dict):  # a preset may hold the schema as a table
            import json

            return json.dumps(value)
        raise ConfigError.invalid(name, f"{value!r} must be a non-empty string")
    if name == "seed":
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError.invalid("seed", f"{value!r} must be an integer")
    if name == "early_stopping" and isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError.invalid(name, f"{value!r} must be true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError.invalid(name, f"{value!r} must be an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError.invalid(name, f"{value!r} must be a number")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError.invalid(name, f"{value!r} must be a string ({kind})")
    return value


def _bad(name: str, value: Any, why: str) -> ConfigError:
    return ConfigError.invalid(name, f"{value!r} {why}")


def _coerce_list(name: str, value: Any) -> tuple:
    """The list-valued fields of the sampler chain: from flags (strings), presets and --input rows."""
    if name == "samplers":
        if isinstance(value, str):
            value = NAMED_ORDERS.get(value.strip(), None) or [s for s in value.split(";")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
            raise _bad(name, value, "must be ';'-separated stage names or a named order (default, llama.cpp)")
        return tuple(STAGE_ALIASES.get(s.strip(), s.strip().replace("-", "_")) for s in value)
    if name == "logit_bias":
        return _coerce_bias(value)
    if name == "chat_template_kwargs" and isinstance(value, dict):  # a TOML table or a JSON object
        import json

        # NOTE: every value as JSON, strings too: "3" stays a string ('k="3"'), where k=3 would read as a number
        return tuple(f"{k}={json.dumps(v)}" for k, v in value.items())
    items = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    if not isinstance(items, (list, tuple)):
        raise _bad(name, value, "must be a list")
    if name in ("stop_token_ids", "allowed_token_ids"):
        out = []
        for item in items:
            if isinstance(item, str) and item.strip().lstrip("-").isdigit():
                item = int(item)
            if not isinstance(item, int) or isinstance(item, bool):
                raise _bad(name, value, "must be token ids (integers)")
            out.append(item)
        return tuple(out)
    if not all(isinstance(item, str) for item in items):
        raise _bad(name, value, "must be a string or a list of strings")
    if name == "dry_sequence_breakers":  # NOTE: a flag cannot hold a newline easily: '\\n' stands for one
        items = [item.replace("\\n", "\n") for item in items]
    return tuple(items)


def _coerce_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """--logit-bias ID=BIAS (repeated), a table {"ID" = BIAS}, or a list of [ID, BIAS] pairs."""
    if isinstance(value, dict):
        value = list(value.items())
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _bad("logit_bias", value, "must be ID=BIAS")
    out: dict[int, float] = {}
    for item in value:
        if isinstance(item, str):
            token, sep, bias = item.partition("=")
            if not sep:
                raise _bad("logit_bias", item, "must be ID=BIAS (a token id, '=', a number)")
            item = (token, bias)
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise _bad("logit_bias", item, "must be ID=BIAS")
        token, bias = item
        try:
            token_id = int(str(token).strip())
            number = float(str(bias).strip()) if not isinstance(bias, (int, float)) or isinstance(bias, bool) \
                else float(bias)
        except ValueError:
            raise _bad("logit_bias", f"{token}={bias}", "must be ID=BIAS (a token id, '=', a number)") from None
        if isinstance(bias, bool):
            raise _bad("logit_bias", f"{token}={bias}", "needs a number as BIAS")
        out[token_id] = number
    return tuple(sorted(out.items()))


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
