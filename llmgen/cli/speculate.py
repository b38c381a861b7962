"""`llmgen speculate`: exact speculative decoding with a draft model or an n-gram draft."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal

import typer

from llmgen.cli import backend_run, common
from llmgen.cli.backend_run import BACKEND, BackendOptions, EngineOptions
from llmgen.cli.options import (
    LOGPROBS,
    MODEL,
    OUTPUT,
    SAMPLING,
    DecodingFlags,
    ModelOptions,
    OutputOptions,
    ProbsOptions,
    PromptArg,
    group,
    option,
    with_options,
)
from llmgen.cli.output import Renderer
from llmgen.decoding.config import DecodingConfig, Resolved
from llmgen.decoding.plan import NGRAM, SELF, SUFFIX, check_speculate_on_vllm, plan_speculate
from llmgen.errors import ModelError, UsageError
from llmgen.loading import models

if TYPE_CHECKING:
    from llmgen.decoding.logprobs import LogprobSpec, TokenLogprob
    from llmgen.decoding.sequence import SequenceResult
    from llmgen.decoding.speculative import Round, SuffixStore
    from llmgen.loading.models import LoadedModel

PANEL = "Speculative decoding"


@dataclass(frozen=True)
class SpeculativeOptions:
    draft: str | None = None
    gamma: str = "auto"
    ngram_max: int = 4
    ngram_min: int = 2
    draft_dtype: str = "auto"
    draft_quant: str = "auto"
    draft_engine: str = "auto"
    compare: bool = False
    trace: Path | None = None
    draft_cache: Path | None = None
    build_draft_cache: Path | None = None




# The options only `speculate` has; the sampling, model and output options are shared with `generate`.
SPECULATIVE = group(SpeculativeOptions, [
    option(name, annotation, default)
    for name, annotation, default in (
        ("draft", Annotated[str | None, typer.Option(
            "--draft", "-d", rich_help_panel=PANEL, show_default="none (required)",
            help="The draft: 'ngram' (prompt lookup, no model), 'suffix' (a suffix trie over the prompt, the output "
                 "and the earlier sequences of this run, no model), 'self' (the target's own weights in int4), "
                 "or a model resolved as for --model (alias, directory, .gguf file, hub id) with the target's "
                 "vocabulary. 'small' is the built-in draft of the default model: the same file in int4.")],
            None),
        ("gamma", Annotated[str, typer.Option(
            "--gamma", "-g", rich_help_panel=PANEL, metavar="N|auto",
            help="Draft tokens per round (>= 1), or 'auto': chosen each round from the measured acceptance "
                 "and the measured costs of draft and target (0 = a plain step when drafting does not pay).")],
            "auto"),
        ("ngram_max", Annotated[int, typer.Option(
            "--ngram-max", rich_help_panel=PANEL,
            help="n-gram draft: the longest n-gram to look up (tried first).")], 4),
        ("ngram_min", Annotated[int, typer.Option(
            "--ngram-min", rich_help_panel=PANEL,
            help="n-gram and suffix drafts: the shortest n-gram to look up; no proposal below it.")], 2),
        ("draft_dtype", Annotated[str, typer.Option(
            "--draft-dtype", rich_help_panel=PANEL,
            help="The draft's dtype: auto (the alias's own, else as --dtype auto), float32, bfloat16, float16.")],
            "auto"),
        ("draft_quant", Annotated[str, typer.Option(
            "--draft-quant", rich_help_panel=PANEL, metavar="auto|none|int4",
            help="The draft's weights, as --quant: auto is the alias's own setting ('small' is int4), int4 for "
                 "--draft self, else none. The target's output does not depend on it, only the speed.")],
            "auto"),
        ("draft_engine", Annotated[str, typer.Option(
            "--draft-engine", rich_help_panel=PANEL, metavar="auto|torch|llamacpp",
            help="The draft's engine, as --engine: auto runs a GGUF draft ('small' included) on llama.cpp when it "
                 "is installed. Target and draft may run on different engines.")],
            "auto"),
        ("compare", Annotated[bool, typer.Option(
            "--compare", rich_help_panel=PANEL,
            help="Also run plain decoding with the same settings and report the measured speedup.")], False),
        ("trace", Annotated[Path | None, typer.Option(
            "--trace", rich_help_panel=PANEL, show_default="off", metavar="FILE",
            help="Write one JSON line per round: proposed tokens, p(x) and q(x), accepted or not, "
                 "and the token that replaced the first rejection (or the bonus token).")], None),
        ("draft_cache", Annotated[Path | None, typer.Option(
            "--draft-cache", rich_help_panel=PANEL, show_default="off", metavar="FILE",
            help="Suffix draft: read what it learned from FILE first, and save it there at the end (a cache: a "
                 "file for another tokenizer, or a damaged one, is ignored with a note).")], None),
        ("build_draft_cache", Annotated[Path | None, typer.Option(
            "--build-draft-cache", rich_help_panel=PANEL, show_default="off", metavar="CORPUS",
            help="Instead of generating: add the text file CORPUS (paragraphs) to the --draft-cache FILE, "
                 "for the model's tokenizer; then --draft suffix --draft-cache FILE drafts from it.")], None),
    )
])


@with_options(spec=SPECULATIVE, sampling=SAMPLING, model_opts=MODEL, output=OUTPUT, probs=LOGPROBS, backend=BACKEND)
def speculate(prompt: PromptArg = None, *, spec: SpeculativeOptions, sampling: DecodingFlags,
              model_opts: ModelOptions, output: OutputOptions, probs: ProbsOptions,
              backend: BackendOptions) -> None:
    """Generate text from PROMPT with speculative decoding: the draft proposes, the target verifies.

    The output has exactly the target's distribution, under every sampling option. With --logprobs, each
    token's logprobs are the target's, from the verification forward: the numbers plain decoding gives.

    On a terminal, tokens are coloured by origin: accepted draft tokens, corrections, bonus tokens.

    Examples:

      llmgen speculate --draft small --gamma 5 "Write a haiku about tea."

      llmgen speculate --draft ngram --gamma auto --greedy "Fix the spelling: Teh quick brwon fox."

      llmgen speculate -d small -g 4 --compare --trace rounds.jsonl --temperature 0.7 "Tell me a story."

      llmgen speculate --build-draft-cache manual.txt --draft-cache manual.sfx

      llmgen speculate -d suffix --draft-cache manual.sfx -n 4 "How do I reset the device?"
    """
    from llmgen.decoding.generation import Speculation
    from llmgen.decoding.speculative import check_compatible

    model_opts = common.model_options(sampling, model_opts)
    if spec.build_draft_cache is not None:
        _build_draft_cache(spec.build_draft_cache, spec.draft_cache, model_opts)
        return
    resolved = common.resolve_settings(sampling)
    config = resolved.config
    if spec.draft_cache is not None and spec.draft != SUFFIX:
        raise UsageError("--draft-cache is the suffix draft's: add --draft suffix")
    gamma = plan_speculate(config, resolved.sources, draft=spec.draft, gamma=spec.gamma,
                           ngram_max=spec.ngram_max, ngram_min=spec.ngram_min)
    draft_ref = spec.draft
    assert draft_ref is not None  # plan_speculate refuses a missing --draft
    logprobs = common.logprob_spec(probs, output.json)
    if sampling.dump_config:
        draft_settings = {} if spec.draft in (NGRAM, SUFFIX) else common.model_settings(
            model_opts, "draft_", model_opts.model if spec.draft == SELF else spec.draft, spec.draft_engine)
        common.dump_config(resolved, {"model": (model_opts.model, "flag or default"),
                                      **common.model_settings(model_opts),
                                      "draft": (spec.draft, "flag"), **draft_settings,
                                      "gamma": (gamma, "flag or default")})
        return
    backend_name, engine_options = backend_run.choose(sampling, backend)
    if backend_name == "vllm":
        _speculate_on_vllm(prompt, resolved, draft_ref, spec, gamma, logprobs, model_opts, output, engine_options)
        return
    text = common.read_prompt(prompt)
    target = common.load_model(model_opts.model, model_opts)
    draft = _load_draft(draft_ref, spec.draft_dtype, spec.draft_quant, model_opts, spec.draft_engine)
    if draft is not None:
        check_compatible(target, draft)
    ids = common.prompt_ids(target, text, output, resolved.config.template_kwargs())
    renderer = common.make_renderer(output, probs, logprobs, target.tokenizer, legend=True)
    if spec.compare:
        renderer = WithBaseline(renderer, target, config)
    store = suffix_store(target, spec.draft_cache) if draft_ref == SUFFIX else None
    with _trace_file(spec.trace) as trace:
        common.run_all(target, ids, resolved, renderer, logprobs=logprobs,
                       speculation=Speculation(draft, gamma, spec.ngram_max, spec.ngram_min, store),
                       on_round=(lambda sequence: _trace_writer(trace, sequence, target.tokenizer)) if trace else None)
    if store is not None and spec.draft_cache is not None:
        _save_cache(spec.draft_cache, store, target)


def suffix_store(target: LoadedModel, cache: Path | None) -> SuffixStore:
    """The suffix draft's store for this process, with what `cache` holds when it fits the tokenizer."""
    from llmgen.decoding.speculative import SuffixStore
    from llmgen.decoding.speculative.proposers import lookup_cache

    store = SuffixStore()
    if cache is not None:
        note = lookup_cache.load(cache, store, _digest(target), target.vocab_size)
        if note:
            print(f"llmgen: {note}", file=sys.stderr)
    return store


def _digest(target: LoadedModel) -> str:
    from llmgen.decoding.speculative.proposers import lookup_cache

    return lookup_cache.tokenizer_digest(target.tokenizer.get_vocab(), target.vocab_size)


def _save_cache(path: Path, store: SuffixStore, target: LoadedModel) -> None:
    from llmgen.decoding.speculative.proposers import lookup_cache

    try:
        lookup_cache.save(path, store, _digest(target), target.vocab_size)
    except OSError as err:
        print(f"llmgen: --draft-cache {path}: not saved ({err.strerror or err})", file=sys.stderr)


def _build_draft_cache(corpus: Path, cache: Path | None, model_opts: ModelOptions) -> None:
    """`--build-draft-cache CORPUS`: the corpus's paragraphs, encoded, added to the cache file."""
    from llmgen.decoding.speculative.proposers import lookup_cache

    if cache is None:
        raise UsageError("--build-draft-cache needs --draft-cache FILE: where to write what it builds")
    try:
        text = corpus.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--build-draft-cache: cannot read {corpus}: {getattr(err, 'strerror', None) or err}") from None
    target = common.load_model(model_opts.model, model_opts)
    store = suffix_store(target, cache)
    sequences = lookup_cache.corpus_sequences(text, lambda p: target.tokenizer(p, add_special_tokens=False)["input_ids"])
    lookup_cache.add_all(store, sequences)
    _save_cache(cache, store, target)
    held = sum(len(s) for s in store.sequences())
    print(f"llmgen: --draft-cache {cache}: {len(sequences)} paragraphs, {held} tokens held "
          f"(budget {store.budget})", file=sys.stderr)


def _speculate_on_vllm(prompt: str | None, resolved: Resolved, draft_ref: str, spec: SpeculativeOptions,
                       gamma: int | Literal["auto"],
                       logprobs: LogprobSpec | None, model_opts: ModelOptions, output: OutputOptions,
                       engine_options: EngineOptions) -> None:
    """vLLM's own speculative decoding with the same draft: n-gram, or a draft model's directory."""
    from llmgen.backends.vllm import Draft

    check_speculate_on_vllm(draft=draft_ref, draft_quant=spec.draft_quant, logprobs=logprobs is not None)
    if draft_ref == NGRAM:
        draft = Draft("ngram", gamma, ngram_max=spec.ngram_max, ngram_min=spec.ngram_min)
    else:
        reference = models.resolve(draft_ref)
        if reference.quant not in (None, "none"):
            raise UsageError(f"--backend vllm: the draft {draft_ref!r} is an int4 alias (llmgen's own CPU path)")
        draft = Draft("model", gamma, model=str(models.model_path(reference, model_opts.offline, common.spinner)))
    backend_run.run_vllm(common.read_prompt(prompt), resolved, model_opts, output, engine_options, draft)


def _load_draft(ref: str, dtype: str, quant: str, model_opts: ModelOptions,
                engine: str = "auto") -> LoadedModel | None:
    if ref in (NGRAM, SUFFIX):
        return None
    if ref == SELF:  # the target's own weights, in 4 bits unless asked otherwise
        ref, quant = model_opts.model, "int4" if quant == "auto" and engine != "llamacpp" else quant
    try:
        return common.load_model(ref, dataclasses.replace(model_opts, dtype=dtype, quant=quant), engine)
    except ModelError as err:
        raise ModelError(f"--draft: {err}") from None


@contextlib.contextmanager
def _trace_file(path: Path | None) -> Iterator[IO[str] | None]:
    if path is None:
        yield None
        return
    try:
        handle = path.open("w", encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--trace: cannot write {path}: {err.strerror}") from None
    with handle:
        yield handle


def _trace_writer(handle: IO[str], sequence: int, tokenizer: Any) -> Any:
    def write(round_: Round) -> None:
        record = {"sequence": sequence, **round_.as_json(),
                  "proposed_text": [tokenizer.decode([t]) for t in round_.proposed],
                  "token_text": tokenizer.decode([round_.token])}
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()

    return write


class WithBaseline(Renderer):
    """`--compare`: before a sequence's statistics are shown, run plain decoding for as many tokens, with
    the same settings, and add its speed and the measured speedup (decode tokens/s over decode tokens/s)."""

    def __init__(self, inner: Renderer, target: LoadedModel, config: DecodingConfig) -> None:
        super().__init__(inner.quiet)
        self.inner = inner
        self.target = target
        self.config = config

    def begin(self, index: int, total: int) -> None:
        self.inner.begin(index, total)

    def text(self, piece: str, origin: str, logprob: TokenLogprob | None = None) -> None:
        self.inner.text(piece, origin, logprob)

    def end(self, result: SequenceResult) -> None:
        result.stats.update(plain_baseline(self.target, result, self.config))
        self.inner.end(result)


def plain_baseline(target: LoadedModel, result: SequenceResult, config: DecodingConfig) -> dict[str, object]:
    """Plain decoding of as many tokens as `result` has, same settings; its speed and the speedup."""
    from llmgen.decoding import generation

    count = max(1, len(result.token_ids))
    plain_config = config.replace(max_new_tokens=count, ignore_eos=True, stop=(), n=1)
    baseline = generation.generate(target, result.prompt_token_ids, plain_config)
    plain_speed = baseline.stats["tokens_per_second"]
    speed = result.stats.get("tokens_per_second") or 0.0
    return {"baseline_tokens_per_second": plain_speed,
            "speedup": round(speed / plain_speed, 3) if plain_speed and speed else None}
