"""What `llmgen bench` runs, decided from its flags: the settings, the strategies, the γ sweep, the
baselines, and which models to load for them. The command line parses and renders; the choices are here.

    bench_config      greedy and 128 new tokens unless a flag or a preset says otherwise
    pick_strategies   the strategies that can run; a default one that cannot is skipped with a note
    load_models       the target on each engine, the int4 twin, the drafts, the llama.cpp baseline's file
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmgen.decoding.config import DecodingConfig, Resolved
from llmgen.decoding.speculative.runner import shares_vocabulary
from llmgen.errors import IncompatibleDraftError, ModelError, UsageError
from llmgen.loading.registry import DEFAULT_MODEL  # the model whose built-in draft is 'small'

if TYPE_CHECKING:
    from llmgen.loading.models import LoadedModel

DEFAULT_STRATEGIES = ("plain", "int4", "ngram", "draft", "beam")
BASELINES = ("hf", "llamacpp")

# (reference, engine, dtype, quant) -> a loaded model; dtype or quant None: as the command line's flags
Loader = Callable[[str, str, "str | None", "str | None"], "LoadedModel"]


def split(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated lists both work: --gamma 1,2 --gamma 4."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def parse_gammas(values: list[str] | None) -> list[int | str]:
    """The γ sweep: integers >= 1 and 'auto', each once, in the order given; 5 when none is."""
    gammas: list[int | str] = []
    for item in split(values) or ["5"]:
        if item == "auto":
            gammas.append("auto")
            continue
        try:
            gamma = int(item)
        except ValueError:
            raise UsageError(f"--gamma: {item!r} is not an integer or 'auto'") from None
        if gamma < 1:
            raise UsageError(f"--gamma: {gamma} must be >= 1")
        gammas.append(gamma)
    return list(dict.fromkeys(gammas))


def parse_baselines(text: str) -> set[str]:
    baselines = set(split([text])) - {"none"}
    if baselines - set(BASELINES):
        raise UsageError(f"--baseline: {text!r} must be none, hf, llamacpp or hf,llamacpp")
    return baselines


def bench_config(resolved: Resolved) -> DecodingConfig:
    """The benchmark's settings: greedy and 128 new tokens unless a flag or a preset says otherwise."""
    config, sources = resolved.config, resolved.sources
    if config.constrained:
        raise UsageError("bench does not take a constraint yet; scripts/bench_constrained.py measures its cost")
    if config.n != 1:
        raise UsageError("-n: bench generates one sequence per run")
    if sources["temperature"] == "default":
        config = config.replace(temperature=0.0)
    if sources["max_new_tokens"] == "default":
        config = config.replace(max_new_tokens=128)
    return config


def pick_strategies(requested: list[str], explicit: bool, drafts: list[str], model: str) -> tuple[list[str], list[str]]:
    """The strategies to run, and notes about default ones skipped (an explicit one missing is an error)."""
    from llmgen.bench import contenders

    notes = []
    chosen = []
    for name in requested:
        contenders.check_strategy(name)
        why = contenders.available(name)
        if why is None and name == "draft" and not drafts and model != DEFAULT_MODEL:
            why = "no --draft given (the built-in draft 'small' belongs to smollm2-135m)"
        if why is None and name == "cross" and not drafts:
            why = "no --draft given (a model with another vocabulary than the target's)"
        if why is not None:
            if explicit:
                raise UsageError(f"--strategies {name}: {why}")
            notes.append(f"skipping {name}: {why}")
            continue
        chosen.append(name)
    return list(dict.fromkeys(chosen)), notes


@dataclass
class Models:
    """The models a bench run needs, and what loading them decided."""

    target: LoadedModel
    others: list[LoadedModel]  # the target on the other engines of --engine
    chosen: list[str]  # the strategies, less those the loaded target rules out
    notes: list[str] = field(default_factory=list)  # default strategies skipped once the models were loaded
    int4: LoadedModel | None = None
    drafts: list[LoadedModel] = field(default_factory=list)
    llamacpp_gguf: str | None = None


def load_models(load: Loader, model: str, engines: list[str], chosen: list[str], explicit: bool,
                drafts: list[str], baselines: set[str], config: DecodingConfig, roofline: bool) -> Models:
    """Load the target (on each engine) and what the chosen strategies and baselines need.

    int4 is dropped when the target already runs quantized (the llama.cpp engine runs the file's own
    quantization); a draft must share the target's vocabulary.
    """
    chosen = list(chosen)
    target = load(model, engines[0], None, None)
    models = Models(target, [load(model, engine, None, None) for engine in engines[1:]], chosen)
    if roofline and target.quant != "none":
        raise UsageError(f"--roofline measures the float path; drop --quant {target.quant}")
    if target.quant != "none" and "int4" in chosen:  # the target itself runs in 4 bits
        chosen.remove("int4")
        why = ("the llama.cpp engine runs the file's own quantization" if target.engine.name == "llamacpp"
               else "the target is already int4")
        if explicit:
            raise UsageError(f"--strategies int4: {why}")
        models.notes.append(f"skipping int4: {why}")
    if "int4" in chosen:
        try:
            models.int4 = load(model, "torch", None, "int4")
        except ModelError as err:
            if explicit:
                raise
            chosen.remove("int4")
            models.notes.append(f"skipping int4: {err}")
    if "llamacpp" in baselines:
        models.llamacpp_gguf = _llamacpp_baseline(target, config, model)
    if "draft" in chosen or "cross" in chosen:
        for ref in drafts or ["small"]:
            draft = (load(model, "torch", "auto", "int4") if ref == "self"
                     else load(ref, engines[0], "auto", "auto"))
            shared = shares_vocabulary(target, draft)
            if not shared and "cross" not in chosen:
                raise IncompatibleDraftError(f"draft {ref!r} has another vocabulary than the target {target.ref!r}; "
                                             "--strategies cross measures such a draft")
            if shared and "draft" not in chosen:
                raise IncompatibleDraftError(f"--strategies cross: draft {ref!r} shares the target's vocabulary; "
                                             "--strategies draft measures it")
            models.drafts.append(draft)
    return models


def _llamacpp_baseline(target: LoadedModel, config: DecodingConfig, model: str) -> str | None:
    """The GGUF file llama.cpp's own loop runs as `--baseline llamacpp`; refused when it cannot."""
    from llmgen.bench import contenders
    from llmgen.loading.models import resolve

    resolved_model = resolve(model)
    gguf = resolved_model.location if resolved_model.kind == "gguf" else None
    why = contenders.llamacpp_unavailable(target, config, gguf)
    if why:
        raise UsageError(f"--baseline llamacpp: {why}")
    return gguf
