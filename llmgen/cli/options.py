"""Command-line options shared by several commands, each declared exactly once.

`with_options(name=GROUP, ...)` adds a group's parameters to a command's signature (Typer reads the
signature), and hands the values to the command as one frozen dataclass per group (`ModelOptions`,
`OutputOptions`, ...). A decoding option left out on the command line arrives as None and is left out of
`DecodingFlags.given`, so that a preset can fill it in: explicit flag > preset > default.

A command may take part of a group (`MODEL.only("model")`) or swap one option's declaration
(`SAMPLING.swap(param)`); the fields it does not declare keep their dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import typer

from llmgen.decoding.config import DEFAULTS, FIELDS
from llmgen.errors import UsageError
from llmgen.loading.registry import DEFAULT_MODEL


def _help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def _default(name: str) -> str:
    value = getattr(DEFAULTS, name)
    if name == "samplers":
        return ";".join(value)
    if name == "dry_sequence_breakers":
        return " ".join(repr(v) for v in value)
    return "none" if value in (None, ()) else str(value)


def option(name: str, annotation: Any, default: object = None) -> inspect.Parameter:
    """One option of a group: a keyword parameter that typer reads from the command's signature.

    `annotation` is `Annotated[type, typer.Option(...)]`, which typer reads (Any: typing's special form)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


T = TypeVar("T")


@dataclass(frozen=True)
class OptionGroup(Generic[T]):
    """Options declared together: the parameters typer reads, and how their values become one `T`."""

    params: tuple[inspect.Parameter, ...]
    build: Callable[[dict[str, object]], T]

    def only(self, *names: str) -> OptionGroup[T]:
        """The same group with only these options; the others keep their defaults in `T`."""
        return OptionGroup(tuple(p for p in self.params if p.name in names), self.build)

    def swap(self, param: inspect.Parameter) -> OptionGroup[T]:
        """The same group with one option declared differently (another default shown, another help)."""
        return OptionGroup(tuple(param if p.name == param.name else p for p in self.params), self.build)


def group(kind: type[T], params: Sequence[inspect.Parameter]) -> OptionGroup[T]:
    """A group whose values are the fields of the dataclass `kind`, by name."""
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = [p.name for p in params if p.name not in names]
    assert not unknown, f"{kind.__name__} has no field for {unknown}"
    return OptionGroup(tuple(params), lambda values: kind(**values))


@dataclass(frozen=True)
class DecodingFlags:
    """The decoding options of SAMPLING (or BEAM): those given on the command line, by field name."""

    given: Mapping[str, object] = field(default_factory=dict)
    greedy: bool = False
    preset: str | None = None
    dump_config: bool = False

    def flags(self) -> dict[str, object]:
        """What `config.resolve` takes: the options given, `greedy` included (it means temperature 0)."""
        flags = dict(self.given)
        if self.greedy:
            if flags.get("temperature", 0) != 0:
                raise UsageError("--greedy means temperature 0; do not combine it with --temperature")
            flags["greedy"] = True
        return flags

    def merged(self, other: DecodingFlags) -> DecodingFlags:
        """These flags and `other`'s (BEAM's beside SAMPLING's)."""
        return dataclasses.replace(self, given={**self.given, **other.given}, greedy=self.greedy or other.greedy)

    def without(self, name: str) -> DecodingFlags:
        return dataclasses.replace(self, given={k: v for k, v in self.given.items() if k != name})


def _decoding_flags(values: dict[str, object]) -> DecodingFlags:
    """None (or an empty list) means 'not given'."""
    given = {k: v for k, v in values.items() if k in FIELDS and v is not None and v != []}
    preset = values.get("preset")
    return DecodingFlags(given, bool(values.get("greedy")), preset if isinstance(preset, str) else None,
                         bool(values.get("dump_config")))


@dataclass(frozen=True)
class ModelOptions:
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "auto"
    engine: str = "auto"
    threads: int | None = None
    offline: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    verbose: bool = False
    threads_source: str | None = None  # not an option: where `threads` came from (flag, a preset, default)


@dataclass(frozen=True)
class OutputOptions:
    chat: bool | None = None
    system: str | None = None
    json: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class PromptCacheOptions:
    prompt_cache: Path | None = None


@dataclass(frozen=True)
class ProbsOptions:
    logprobs: int | None = None
    logprobs_mode: str | None = None
    show_probs: bool = False
    show_alternatives: bool = False


def _decoding(name: str, type_: Any, *flags: str, panel: str = "Sampling", metavar: str | None = None
              ) -> inspect.Parameter:
    flag = typer.Option(*flags, help=_help(name), show_default=_default(name), rich_help_panel=panel,
                        metavar=metavar)
    return option(name, Annotated[type_ | None, flag])


TOKENS, MORE, REASONING = "Token controls", "More samplers (llama.cpp, HF)", "Reasoning"


SAMPLING = OptionGroup((
    _decoding("temperature", float, "--temperature", "-t"),
    option("greedy", Annotated[bool, typer.Option("--greedy", help="Shorthand for --temperature 0.",
                                                   rich_help_panel="Sampling")], False),
    _decoding("top_k", int, "--top-k"),
    _decoding("top_p", float, "--top-p"),
    _decoding("min_p", float, "--min-p"),
    _decoding("frequency_penalty", float, "--frequency-penalty", panel="Penalties"),
    _decoding("presence_penalty", float, "--presence-penalty", panel="Penalties"),
    _decoding("repetition_penalty", float, "--repetition-penalty", panel="Penalties"),
    _decoding("penalty_scope", str, "--penalty-scope", panel="Penalties"),
    _decoding("penalty_window", int, "--penalty-window", panel="Penalties"),
    _decoding("max_new_tokens", int, "--max-new-tokens", "-N", panel="Length"),
    _decoding("stop", list[str], "--stop", panel="Length"),
    option("ignore_eos", Annotated[bool | None, typer.Option(
        "--ignore-eos", help=_help("ignore_eos"), show_default="off", rich_help_panel="Length")]),
    _decoding("schema", str, "--schema", panel="Constrained output"),
    option("json_object", Annotated[bool | None, typer.Option(
        "--json-object", help=_help("json_object"), show_default="off", rich_help_panel="Constrained output")]),
    _decoding("regex", str, "--regex", panel="Constrained output"),
    _decoding("choice", list[str], "--choice", panel="Constrained output"),
    _decoding("grammar", str, "--grammar", panel="Constrained output"),
    _decoding("logit_bias", list[str], "--logit-bias", panel=TOKENS, metavar="ID=BIAS"),
    _decoding("min_tokens", int, "--min-tokens", panel=TOKENS),
    _decoding("stop_token_ids", list[int], "--stop-token-id", panel=TOKENS, metavar="ID"),
    _decoding("bad_words", list[str], "--bad-word", panel=TOKENS, metavar="TEXT"),
    _decoding("allowed_token_ids", list[int], "--allowed-token-id", panel=TOKENS, metavar="ID"),
    _decoding("samplers", str, "--samplers", panel=MORE, metavar="ORDER"),
    _decoding("typical_p", float, "--typical-p", panel=MORE),
    _decoding("epsilon_cutoff", float, "--epsilon-cutoff", panel=MORE),
    _decoding("eta_cutoff", float, "--eta-cutoff", panel=MORE),
    _decoding("top_n_sigma", float, "--top-n-sigma", panel=MORE),
    _decoding("dry_multiplier", float, "--dry-multiplier", panel=MORE),
    _decoding("dry_base", float, "--dry-base", panel=MORE),
    _decoding("dry_allowed_length", int, "--dry-allowed-length", panel=MORE),
    _decoding("dry_penalty_last_n", int, "--dry-penalty-last-n", panel=MORE),
    _decoding("dry_sequence_breakers", list[str], "--dry-sequence-breaker", panel=MORE, metavar="TEXT"),
    _decoding("xtc_probability", float, "--xtc-probability", panel=MORE),
    _decoding("xtc_threshold", float, "--xtc-threshold", panel=MORE),
    _decoding("mirostat", int, "--mirostat", panel=MORE),
    _decoding("mirostat_tau", float, "--mirostat-tau", panel=MORE),
    _decoding("mirostat_eta", float, "--mirostat-eta", panel=MORE),
    _decoding("dynatemp_range", float, "--dynatemp-range", panel=MORE),
    _decoding("dynatemp_exp", float, "--dynatemp-exp", panel=MORE),
    _decoding("chat_template_kwargs", list[str], "--chat-template-kwarg", panel=REASONING, metavar="KEY=VALUE"),
    _decoding("reasoning_budget", int, "--reasoning-budget", panel=REASONING, metavar="N"),
    _decoding("seed", int, "--seed"),
    _decoding("n", int, "-n", "--num-return-sequences"),
    option("preset", Annotated[str | None, typer.Option(
        "--preset", "-p", help="A preset name (see 'llmgen presets list') or a path to a TOML file.",
        show_default="none", rich_help_panel="Sampling")]),
    option("dump_config", Annotated[bool, typer.Option(
        "--dump-config", help="Print the resolved settings and where each came from, then exit.",
        rich_help_panel="Sampling")], False),
), _decoding_flags)

BEAM_HELP = ("Beam search is deterministic: there is no beam sampling, so --temperature (other than 0), "
             "--top-k, --top-p and --min-p are refused with it. Penalties apply per beam, to that beam's tokens.")

BEAM = OptionGroup((
    option("num_beams", Annotated[int | None, typer.Option(
        "--num-beams", help=f"{_help('num_beams')} {BEAM_HELP}", show_default=_default("num_beams"),
        rich_help_panel="Beam search")]),
    _decoding("length_penalty", float, "--length-penalty", panel="Beam search"),
    option("early_stopping", Annotated[str | None, typer.Option(
        "--early-stopping", show_default=_default("early_stopping"), rich_help_panel="Beam search",
        help=f"{_help('early_stopping')} true: stop as soon as B hypotheses have finished. false: stop once B have "
             "finished and the best running beam, scored at its current length, cannot beat the worst of them "
             "(a heuristic). never: stop only when no running beam can possibly beat them.")]),
    _decoding("no_repeat_ngram_size", int, "--no-repeat-ngram-size", panel="Beam search"),
), _decoding_flags)

MODEL = group(ModelOptions, [
    option("model", Annotated[str, typer.Option(
        "--model", "-m", envvar="LLMGEN_MODEL", rich_help_panel="Model",
        help="Alias (see 'llmgen models list'), model directory, .gguf file or hub id.")], DEFAULT_MODEL),
    option("device", Annotated[str, typer.Option(
        "--device", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.", rich_help_panel="Model")],
        "auto"),
    option("dtype", Annotated[str, typer.Option(
        "--dtype", help="auto (float32 on cpu, bfloat16 on cuda), float32, bfloat16 or float16.",
        rich_help_panel="Model")], "auto"),
    option("quant", Annotated[str, typer.Option(
        "--quant", metavar="auto|none|int4", rich_help_panel="Model",
        help="Weights: none (the model's float weights through transformers) or int4 (4-bit weights on the "
             "CPU through llmgen's lean Llama forward; a GGUF file's own Q4_0/Q4_1 codes, else quantized at "
             "group 32). Default: the alias's own setting, else none.")], "auto"),
    option("engine", Annotated[str, typer.Option(
        "--engine", metavar="auto|torch|llamacpp", envvar="LLMGEN_ENGINE", rich_help_panel="Model",
        help="What runs the model: torch (transformers' forward, or the int4 path), or llamacpp (a GGUF file run "
             "by llama.cpp as it is, memory-mapped, with the file's own tokenizer; extra llmgen\\[llamacpp]). "
             "auto: llamacpp for a .gguf file (the embedded model included) when llama.cpp is installed and "
             "no --quant is given, else torch. llmgen's own decoding runs on either.")], "auto"),
    option("threads", Annotated[int | None, typer.Option(
        "--threads", metavar="N", envvar="LLMGEN_THREADS", rich_help_panel="Model",
        show_default="the physical cores; a preset's threads",
        help="Threads per forward: torch's intra-op threads, llama.cpp's n_threads and n_threads_batch.")]),
    option("offline", Annotated[bool, typer.Option(
        "--offline", help="Never download from the hub; use the local cache only.", rich_help_panel="Model")],
        False),
    option("allow_pickle", Annotated[bool, typer.Option(
        "--allow-pickle", help="Allow pickle (.bin) weights, which can run code when loaded.",
        rich_help_panel="Model")], False),
    option("trust_remote_code", Annotated[bool, typer.Option(
        "--trust-remote-code", help="Allow models whose config asks for their own Python code.",
        rich_help_panel="Model")], False),
    option("verbose", Annotated[bool, typer.Option(
        "--verbose", rich_help_panel="Model",
        help="Let the libraries' own progress bars and log lines through while the model loads (transformers' "
             "GGUF conversion, llama.cpp's log); without it llmgen shows its own progress on stderr.")], False),
])

OUTPUT = group(OutputOptions, [
    option("chat", Annotated[bool | None, typer.Option(
        "--chat/--raw", show_default="chat if the tokenizer has a chat template",
        help="Chat applies the tokenizer's chat template; raw tokenizes the prompt as it is.",
        rich_help_panel="Prompt and output")]),
    option("system", Annotated[str | None, typer.Option(
        "--system", help="System message (chat mode).", rich_help_panel="Prompt and output")]),
    option("json", Annotated[bool, typer.Option(
        "--json", help="Print one JSON object per sequence (JSON Lines) instead of text.",
        rich_help_panel="Prompt and output")], False),
    option("quiet", Annotated[bool, typer.Option(
        "--quiet", "-q", help="No statistics on stderr.", rich_help_panel="Prompt and output")], False),
])

PROMPT_CACHE = group(PromptCacheOptions, [
    option("prompt_cache", Annotated[Path | None, typer.Option(
        "--prompt-cache", metavar="FILE", show_default="none", rich_help_panel="Prompt and output",
        help="Load the prompt's KV cells from FILE when it was saved for this model, engine and settings and "
             "the prompt begins with its tokens (only the rest is prefilled); save them there after the run.")]),
])

LOGPROBS = group(ProbsOptions, [
    option("logprobs", Annotated[int | None, typer.Option(
        "--logprobs", metavar="N", show_default="off", rich_help_panel="Probabilities",
        help="Give each generated token's log-probability and its N most likely alternatives (0 to 20), in the "
             "\"logprobs\" field of --json rows (OpenAI's field names).")]),
    option("logprobs_mode", Annotated[str | None, typer.Option(
        "--logprobs-mode", metavar="raw|processed", show_default="raw", rich_help_panel="Probabilities",
        help="raw: the model's distribution, before any processor. processed: the distribution the token was "
             "drawn from, after penalties, temperature and truncation (greedy: after the penalties).")]),
    option("show_probs", Annotated[bool, typer.Option(
        "--show-probs", rich_help_panel="Probabilities",
        help="On a terminal, colour each streamed token by its probability (processed, unless --logprobs-mode "
             "says raw), with a legend. Plain in pipes and with NO_COLOR.")], False),
    option("show_alternatives", Annotated[bool, typer.Option(
        "--show-alternatives", rich_help_panel="Probabilities",
        help="As --show-probs, and after the text a table of the uncertain tokens (p < 0.5) with their top "
             "alternatives.")], False),
])

PromptArg = Annotated[str | None, typer.Argument(
    help="The prompt. Read from stdin when it is '-' or absent and stdin is not a terminal.",
    show_default=False)]


def with_options(**groups: OptionGroup[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add each group's parameters to the command; the command receives `group_name=the_group's_dataclass`.

    Any: a command's own signature, which typer reads; mypy checks the command's body against its annotations.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.name not in groups]

        @functools.wraps(func)
        def wrapper(**kwargs: object) -> object:
            for name, grouped in groups.items():
                kwargs[name] = grouped.build({p.name: kwargs.pop(p.name) for p in grouped.params})
            return func(**kwargs)

        params = own + [p for grouped in groups.values() for p in grouped.params]
        params.sort(key=lambda p: p.kind)  # positional arguments first
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read our signature, not the original one
        return wrapper

    return decorate
