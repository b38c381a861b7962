"""The steps every generating command shares: prompt, settings, model, and the per-sequence loop."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from llmgen import presets
from llmgen.cli.options import DecodingFlags, ModelOptions, OutputOptions, ProbsOptions
from llmgen.cli.output import Renderer, stderr_console
from llmgen.cli.output import make_renderer as output_renderer
from llmgen.decoding.config import FIELDS, Resolved, resolve
from llmgen.errors import ModelError, PromptError, UsageError
from llmgen.loading import models
from llmgen.loading.hfutil import verbose
from llmgen.loading.threads import check_threads

# NOTE: what needs torch is imported inside the functions that run a model, so that `--help` and the
# settings checks import neither torch nor transformers (tests/cli/test_lazy_imports.py checks it).
if TYPE_CHECKING:
    from llmgen.decoding.generation import Speculation
    from llmgen.decoding.logprobs import LogprobSpec, Mode
    from llmgen.decoding.sequence import SequenceResult
    from llmgen.decoding.speculative.loop import OnRound
    from llmgen.loading.models import LoadedModel

MAX_STDIN_BYTES = 16 * 1024 * 1024


def read_prompt(prompt: str | None) -> str:
    """The argument, or stdin when the argument is '-' or absent and stdin is not a terminal.

    Decisions for text from strangers (docs/bad-input.md):
    - stdin is decoded as UTF-8; invalid bytes become U+FFFD, with a warning on stderr. Generation goes on,
      so a file with one stray Latin-1 byte still works.
    - a NUL byte is refused (usage error): text prompts do not contain one, binary files piped by
      mistake do, and tokenizers treat it inconsistently.
    - stdin is read up to 16 MiB; more is refused before it is tokenized (no context is that long).
    - an empty or all-whitespace prompt is refused.
    """
    if prompt is not None and prompt != "-":
        text = prompt
    elif sys.stdin is None or (prompt is None and sys.stdin.isatty()):
        raise PromptError("no prompt: give one as an argument or on stdin")
    else:
        if hasattr(sys.stdin, "buffer"):
            raw = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
        else:
            raw = sys.stdin.read(MAX_STDIN_BYTES + 1).encode()
        if len(raw) > MAX_STDIN_BYTES:
            raise PromptError(f"the prompt on stdin is larger than {MAX_STDIN_BYTES // (1024 * 1024)} MiB")
        text = raw.decode("utf-8", errors="replace")
        if "\ufffd" in text and b"\xef\xbf\xbd" not in raw:
            print("llmgen: warning: stdin is not valid UTF-8; invalid bytes were replaced with U+FFFD",
                  file=sys.stderr)
    if "\0" in text:
        raise PromptError(f"the prompt contains a NUL byte (at character {text.index(chr(0))}); "
                          "is it a binary file?")
    if not text.strip():
        raise PromptError("the prompt is empty")
    return text


def model_options(sampling: DecodingFlags, model_opts: ModelOptions) -> ModelOptions:
    """The --model options with their threads settled: --threads, else the preset's `threads`, else none
    (the engine's default); `threads_source` says which."""
    check_threads(model_opts.threads)
    preset = presets.load(sampling.preset) if sampling.preset else None
    if model_opts.threads is None and preset is not None and preset.threads is not None:
        return dataclasses.replace(model_opts, threads=preset.threads, threads_source=f"preset {preset.name}")
    return dataclasses.replace(model_opts, threads_source="flag" if model_opts.threads is not None else "default")


def resolve_settings(sampling: DecodingFlags) -> Resolved:
    """The decoding settings: flags > preset > defaults."""
    preset = presets.load(sampling.preset) if sampling.preset else None
    resolved = resolve(preset.values if preset else None, preset.name if preset else None, sampling.flags())
    from llmgen.decoding import constraints

    constraints.check_options(resolved.config)  # one at a time, a schema file that exists, llguidance installed
    return resolved


def model_settings(model_opts: ModelOptions, prefix: str = "", ref: str | None = None,
                   engine: str | None = None) -> dict[str, tuple[object, str]]:
    """What --dump-config shows of a model: its reference, the engine that will run it, the threads."""
    ref = ref or model_opts.model
    requested = engine or model_opts.engine
    try:
        chosen = models.choose_engine(requested, models.resolve(ref), model_opts.quant)
    except ModelError:
        chosen = requested  # a model that cannot be resolved fails when it is loaded, not here
    threads = model_opts.threads
    source = model_opts.threads_source or ("flag" if threads is not None else "default")
    invariant, why = models.batch_invariance(chosen)
    return {f"{prefix}engine": (chosen, "flag" if requested != "auto" else "auto"),
            f"{prefix}threads": (threads if threads is not None else models.physical_cores(), source),
            f"{prefix}batch_invariant": (invariant, why)}


def dump_config(resolved: Resolved, extra: dict[str, tuple[object, str]] | None = None) -> None:
    for name in FIELDS:
        value = getattr(resolved.config, name)
        print(f"{name} = {_toml_value(value)}  # {resolved.sources[name]}")
    for name, (value, source) in (extra or {}).items():
        print(f"{name} = {_toml_value(value)}  # {source}")


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return str(value)


@contextlib.contextmanager
def spinner(description: str) -> Iterator[None]:
    """A Rich progress display on stderr while slow work (a GGUF conversion) runs."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=stderr_console(), transient=True) as progress:
        progress.add_task(description, total=None)
        yield


def libraries_speak(model_opts: ModelOptions) -> contextlib.AbstractContextManager[None]:
    """--verbose: transformers' and llama.cpp's own bars and log lines reach stderr while loading."""
    return verbose() if model_opts.verbose else contextlib.nullcontext()


def load_model(ref: str, model_opts: ModelOptions, engine: str | None = None) -> LoadedModel:
    """Load `ref` with the --model options; `engine` overrides --engine (the draft's --draft-engine)."""
    with libraries_speak(model_opts):
        return models.load(ref, device=model_opts.device, dtype=model_opts.dtype, quant=model_opts.quant,
                           offline=model_opts.offline, allow_pickle=model_opts.allow_pickle,
                           trust_remote_code=model_opts.trust_remote_code, progress=spinner,
                           engine=engine or model_opts.engine, threads=model_opts.threads)


def prompt_ids(loaded: LoadedModel, text: str, output: OutputOptions,
               template_kwargs: dict[str, object] | None = None) -> list[int]:
    """Chat template when asked (default: when the tokenizer has one), else `tokenizer(text)` as is."""
    from llmgen.decoding.sequence import encode_prompt

    return encode_prompt(loaded, text, output.chat, output.system, template_kwargs)


def logprob_spec(probs: ProbsOptions, json_mode: bool) -> LogprobSpec | None:
    """What --logprobs, --logprobs-mode and --show-probs ask for; None when nothing is.

    --show-probs counts only when tokens stream to a terminal; there it defaults to the processed
    distribution (the one each token was drawn from), and --show-alternatives asks for 5 alternatives.
    Checked before any model is loaded.
    """
    from llmgen.decoding.logprobs import LogprobSpec

    top = probs.logprobs
    shown = (probs.show_probs or probs.show_alternatives) and not json_mode and sys.stdout.isatty()
    # an unknown mode is refused (by LogprobSpec) even when nothing else asks for logprobs
    mode = None if probs.logprobs_mode is None else LogprobSpec(0, cast("Mode", probs.logprobs_mode)).mode
    if top is None and not shown:
        if mode is not None:
            raise UsageError("--logprobs-mode needs --logprobs N (or --show-probs on a terminal)")
        return None
    spec = LogprobSpec(0 if top is None else top, mode or ("processed" if shown else "raw"))
    if shown and probs.show_alternatives and spec.top < 5:
        spec = LogprobSpec(5, spec.mode)
    return spec


def make_renderer(output: OutputOptions, probs: ProbsOptions, spec: LogprobSpec | None, tokenizer: Any,
                  legend: bool = False) -> Renderer:
    """The renderer for where stdout goes; the probability view on a terminal when asked."""
    if (probs.show_probs or probs.show_alternatives) and spec is not None and not output.json \
            and sys.stdout.isatty():
        from llmgen.cli.probs_view import ProbsRenderer

        return ProbsRenderer(output.quiet, tokenizer, spec.mode, probs.show_alternatives)
    return output_renderer(output.json, output.quiet, legend)


def run_all(loaded: LoadedModel, ids: list[int], resolved: Resolved, renderer: Renderer, *,
            logprobs: LogprobSpec | None = None, speculation: Speculation | None = None,
            on_round: Callable[[int], OnRound] | None = None, prompt_cache: Path | None = None) -> list[SequenceResult]:
    """Generate `n` sequences one after another (`decoding.generation.generate`), rendering as they come.

    Sequence i draws from its own stream, `batch.row_generator(seed, i)`, as row i of `generate -n` does:
    `-n 2 --seed S` gives as its second sequence what `-n 1` gives with the second row's seed.
    `speculation`: decode speculatively; `on_round(i)`: sequence i's round hook (`--trace`).
    `prompt_cache`: the first sequence starts from the prompt's cells in that file, and saves them there
    (`loading/prompt_cache.py`).
    """
    from llmgen.decoding import constraints, generation
    from llmgen.decoding.batch import row_generator

    config = resolved.config
    results = []
    for index in range(config.n):
        renderer.begin(index, config.n)
        lm, cached = None, 0
        if prompt_cache is not None and index == 0:
            from llmgen.loading import prompt_cache as files

            lm, cached = files.start(prompt_cache, loaded, ids, lambda line: print(f"llmgen: note: {line}", file=sys.stderr))
        result = generation.generate(loaded, ids, config, speculation=speculation,
                                     generator=row_generator(config.seed, index, loaded.device), logprobs=logprobs,
                                     on_text=renderer.text, on_round=on_round(index) if on_round else None, lm=lm)
        result.stats["engine"] = loaded.engine.name
        if lm is not None and prompt_cache is not None:
            result.stats["cached_tokens"] = cached
            if cached < len(ids) - 1:  # the file lacks some of this prompt: keep this one's cells
                lm.rollback(len(ids))
                files.keep(prompt_cache, loaded, ids, lm)
        renderer.end(result)
        constraints.warn_incomplete(config, result.finish_reason)
        results.append(result)
    return results
