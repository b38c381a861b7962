"""The configurations a benchmark compares ("contenders"), each able to run once on a prompt.

Every contender turns prompt ids into a `RunRecord` the same way: a clock starts just before the
first forward pass, marks the arrival of every generated token, and stops at the last one. Then

    time to first token (TTFT) = first token - start       (prefill plus one pick)
    prefill tokens/s           = prompt tokens / TTFT
    decode tokens/s            = (generated - 1) / (last token - first token)

For HF `generate()` the marks come from a streamer, which HF calls with each new token (several at
once after an assisted round). Beam search streams nothing in either library (a beam's tokens are
final only at the end), so beam rows measure end to end: decode tokens/s = generated / total time.

llmgen's plain and speculative decoding run through `decoding.generation`, as `llmgen generate`
does. Beam search is imported when a contender is built (`adapters.py`, `available()`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmgen.bench.stats import PeakMemory
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.generation import Speculation, stream
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import run_sequence, token_budget
from llmgen.decoding.speculative.runner import parse_gamma, shares_vocabulary
from llmgen.decoding.stats import Timer
from llmgen.errors import UsageError
from llmgen.loading.models import LoadedModel

# The strategies `llmgen bench` knows, in the order rows are shown. `int4` is plain decoding with the
# target's weights in 4 bits (`--quant int4`), measured against `plain` in the same run. `cross`: a --draft
# with another vocabulary (`proposers/cross.py`); `draft` takes those with the target's.
STRATEGIES = ("plain", "int4", "penalties", "ngram", "suffix", "draft", "cross", "beam")
# The `penalties` strategy: plain decoding with these OpenAI penalties, unless set by flag or preset.
PENALTIES = {"frequency_penalty": 0.5, "presence_penalty": 0.5}
HF_PROMPT_LOOKUP = 10  # HF generate(prompt_lookup_num_tokens=...), the value HF's docs suggest


def available(strategy: str) -> str | None:
    """None when the strategy can run here, else why not."""
    module = {"ngram": "llmgen.decoding.speculative", "suffix": "llmgen.decoding.speculative",
              "draft": "llmgen.decoding.speculative", "cross": "llmgen.decoding.speculative",
              "beam": "llmgen.decoding.beam"}.get(strategy)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            return f"{module} is not part of this installation"
        raise
    return None


@dataclass
class RunRecord:
    """What one run measured."""

    prompt_tokens: int
    generated_tokens: int
    ttft_s: float | None
    decode_tps: float | None
    total_s: float
    peak_bytes: int
    token_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)  # speculative counts

    @property
    def prefill_tps(self) -> float | None:
        return self.prompt_tokens / self.ttft_s if self.ttft_s else None


@dataclass
class Contender:
    """One configuration: a label, what it is, and how to run it once."""

    label: str
    strategy: str  # one of STRATEGIES
    engine: str  # "llmgen" or "hf"
    run_once: Callable[[list[int]], RunRecord]
    gamma: int | str | None = None
    draft: str | None = None
    twin: str | None = None  # for an HF row: the label of the llmgen row it mirrors
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Marks:
    """What a run's body reports: time to first token and decode speed (None for end-to-end runs)."""

    ttft_s: float | None
    decode_tps: float | None
    token_ids: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_timer(cls, timer: Timer, token_ids: list[int], extra: dict[str, Any] | None = None) -> Marks:
        return cls(timer.prefill_seconds if timer.first is not None else None,
                   timer.tokens_per_second or None, token_ids, extra or {})


def measure(device: torch.device, body: Callable[[], Marks], prompt_tokens: int,
            end_to_end: bool = False) -> RunRecord:
    """Run `body` under a memory probe and a wall clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        marks = body()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - started
    tokens = marks.token_ids
    if end_to_end:
        return RunRecord(prompt_tokens, len(tokens), None, len(tokens) / total if total > 0 else None,
                         total, memory.peak, tokens, marks.extra)
    return RunRecord(prompt_tokens, len(tokens), marks.ttft_s, marks.decode_tps, total, memory.peak,
                     tokens, marks.extra)


# --- llmgen ---------------------------------------------------------------------------------------

def _run_source(loaded: LoadedModel, config: DecodingConfig, ids: list[int], speculation: Speculation | None) -> Marks:
    """One sequence through `generation.stream` and `run_sequence`, as `llmgen generate` runs it."""
    generator = make_generator(config.seed if config.seed is not None else 0, loaded.device)
    tokens = stream(loaded, ids, config, generator, speculation=speculation)
    result = run_sequence(tokens.tokens, loaded.tokenizer, ids, config, loaded.eos_token_ids, loaded.context_length)
    stats = result.stats
    return Marks(stats["prefill_seconds"], stats["tokens_per_second"] or None,
                 _strip_eos(result.token_ids, loaded), tokens.stats())


def _strip_eos(tokens: list[int], loaded: LoadedModel) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] in loaded.eos_token_ids else tokens


def plain(loaded: LoadedModel, config: DecodingConfig, label: str = "plain",
          strategy: str = "plain") -> Contender:
    def run_once(ids: list[int]) -> RunRecord:
        return measure(loaded.device, lambda: _run_source(loaded, config, ids, None), len(ids))

    return Contender(label, strategy, "llmgen", run_once, settings=_settings(config))


def speculative(loaded: LoadedModel, config: DecodingConfig, draft: LoadedModel | None, gamma: int | str,
                label: str, suffix: bool = False) -> Contender:
    """Speculative decoding with a model draft, or with the n-gram draft when `draft` is None, or the
    suffix draft with `suffix`: one store for the row's runs in turn, as a process serving requests one
    after another has, so each run drafts from the earlier runs' prompts and outputs. A prompt the row
    has run already starts a fresh store (a new pass over the set: the warm-up's prompt, or more runs
    than prompts), so no run drafts from its own earlier output."""
    from llmgen.decoding.speculative import SuffixStore

    speculation = Speculation(draft, parse_gamma(gamma), suffix=SuffixStore() if suffix else None)
    seen: set[tuple[int, ...]] = set()

    def run_once(ids: list[int]) -> RunRecord:
        nonlocal speculation
        if suffix and tuple(ids) in seen:
            speculation = dataclasses.replace(speculation, suffix=SuffixStore())
            seen.clear()
        seen.add(tuple(ids))
        return measure(loaded.device, lambda: _run_source(loaded, config, ids, speculation), len(ids))

    strategy = ("suffix" if suffix else "ngram") if draft is None else "draft" if shares_vocabulary(loaded, draft) else "cross"
    return Contender(label, strategy, "llmgen", run_once, gamma=gamma,
                     draft=None if draft is None else draft.ref, settings=_settings(config))


def beam(loaded: LoadedModel, config: DecodingConfig, num_beams: int, label: str) -> Contender:
    from llmgen.bench import adapters

    beam_config = config.replace(num_beams=num_beams, temperature=0.0)

    def run_once(ids: list[int]) -> RunRecord:
        def body() -> Marks:
            return Marks(None, None, _strip_eos(adapters.beam_tokens(loaded, ids, beam_config), loaded))

        return measure(loaded.device, body, len(ids), end_to_end=True)

    return Contender(label, "beam", "llmgen", run_once, settings={**_settings(config), "num_beams": num_beams})


def _settings(config: DecodingConfig) -> dict[str, Any]:
    keys = ("temperature", "top_k", "top_p", "min_p", "frequency_penalty", "presence_penalty",
            "repetition_penalty", "max_new_tokens", "seed")
    return {key: getattr(config, key) for key in keys}


# --- HF generate() --------------------------------------------------------------------------------

class _StreamClock:
    """An HF streamer that only marks when tokens arrive. HF first hands it the prompt, which it skips."""

    def __init__(self) -> None:
        self.timer = Timer()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.timer.token(int(value.numel()))

    def end(self) -> None: ...


def hf_unsupported(config: DecodingConfig, loaded: LoadedModel | None = None) -> str | None:
    """Why HF generate() cannot run these settings (on this model), or None."""
    if loaded is not None and loaded.quant != "none":
        return f"HF generate() cannot run llmgen's {loaded.quant} path"
    if config.frequency_penalty or config.presence_penalty:
        return "HF generate() has no OpenAI frequency or presence penalty"
    if config.uses_penalties and config.penalty_scope != "all":
        return "HF's repetition penalty counts the prompt too (penalty scope 'all' only)"
    if config.penalty_window:
        return "HF generate() has no penalty window"
    return None


def hf_kwargs(loaded: LoadedModel, config: DecodingConfig, budget: int) -> dict[str, Any]:
    """generate() arguments equal to `config` (checked by `hf_unsupported` first)."""
    eos = sorted(loaded.eos_token_ids)
    kwargs: dict[str, Any] = {"max_new_tokens": budget, "eos_token_id": eos or None,
                              "pad_token_id": eos[0] if eos else None}
    if config.greedy:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(do_sample=True, temperature=config.temperature, top_k=config.top_k or None,
                      top_p=config.top_p if config.top_p < 1 else None, min_p=config.min_p or None)
    if config.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = config.repetition_penalty
    return kwargs


def hf(loaded: LoadedModel, config: DecodingConfig, label: str, twin: str, strategy: str = "plain",
       extra: dict[str, Any] | None = None, gamma: int | str | None = None, draft: str | None = None) -> Contender:
    """HF generate() with the same settings, plus `extra` (prompt lookup, an assistant model, beams)."""
    end_to_end = bool(extra and extra.get("num_beams", 1) > 1)

    def run_once(ids: list[int]) -> RunRecord:
        kwargs = hf_kwargs(loaded, config, token_budget(len(ids), config, loaded.context_length))
        kwargs.update(extra or {})
        input_ids = torch.tensor([ids], device=loaded.device)

        def body() -> Marks:
            if config.seed is not None:
                torch.manual_seed(config.seed)
            clock = _StreamClock()
            with torch.inference_mode():
                out = loaded.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                            streamer=None if end_to_end else clock, **kwargs)
            tokens = [int(t) for t in out[0, len(ids):].tolist()]
            return Marks.from_timer(clock.timer, _strip_hf(tokens, loaded))

        return measure(loaded.device, body, len(ids), end_to_end=end_to_end)

    shown = {k: v for k, v in (extra or {}).items() if k != "assistant_model"}
    return Contender(label, strategy, "hf", run_once, gamma=gamma, draft=draft, twin=twin,
                     settings={**_settings(config), **shown})


def _strip_hf(tokens: list[int], loaded: LoadedModel) -> list[int]:
    """HF pads after EOS; keep the tokens before the first EOS, as llmgen returns them."""
    for index, token in enumerate(tokens):
        if token in loaded.eos_token_ids:
            return tokens[:index]
    return tokens


# --- the calibration behind the predicted speedup ------------------------------------------------

class ForwardClock:
    """Times one cached forward over k tokens after a prompt; the cache is rolled back after each."""

    def __init__(self, loaded: LoadedModel, prompt_ids: Sequence[int]) -> None:
        self.loaded = loaded
        self.lm = loaded.engine.sequence()
        self.lm.forward(prompt_ids)
        self.base = self.lm.length
        self.prompt_ids = list(prompt_ids)

    @torch.inference_mode()
    def seconds(self, k: int) -> float:
        tokens = (self.prompt_ids * k)[-k:]
        started = time.perf_counter()
        self.lm.forward(tokens, all_logits=True)
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize(self.loaded.device)
        elapsed = time.perf_counter() - started
        self.lm.rollback(self.base)
        return elapsed


def check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise UsageError(f"--strategies: unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")


# --- llama.cpp (the optional extra llmgen[llamacpp]) -----------------------------------------------

LLAMACPP_INSTALL = "pip install 'llmgen[llamacpp]' (llama-cpp-python; it builds llama.cpp from source, ~5 min)"


def llamacpp_unavailable(loaded: LoadedModel, config: DecodingConfig, gguf: str | None) -> str | None:
    """Why llama.cpp cannot be a baseline here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama.cpp is not installed: {LLAMACPP_INSTALL}"
    if gguf is None:
        return f"{loaded.ref!r} is not a GGUF file; llama.cpp runs GGUF files"
    if not config.greedy or config.uses_penalties:
        return "the llama.cpp baseline runs greedy decoding without penalties only"
    return None


def llamacpp(loaded: LoadedModel, config: DecodingConfig, gguf: str, label: str, twin: str,
             lookup: int | None = None) -> Contender:
    """llama.cpp (llama-cpp-python) on the same GGUF file: greedy, the same prompt ids, as many threads
    as the row it pairs with (the llama.cpp engine's n_threads, else torch's), its own KV cache reset before
    every run, its defaults otherwise (an f16 KV cache). With `lookup`, its own prompt-lookup speculative
    decoding (`LlamaPromptLookupDecoding(num_pred_tokens=lookup)`), the twin of an n-gram row."""
    import llama_cpp

    threads = getattr(getattr(loaded.engine, "model", None), "threads", None) or torch.get_num_threads()
    draft = None
    if lookup is not None:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=lookup)
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=min(loaded.context_length, 4096), n_threads=threads,
                          n_threads_batch=threads, draft_model=draft, verbose=False)

    def run_once(ids: list[int]) -> RunRecord:
        budget = token_budget(len(ids), config, loaded.context_length)

        def body() -> Marks:
            timer = Timer()
            tokens: list[int] = []
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                      reset=True):
                timer.token()
                if token in loaded.eos_token_ids:
                    break
                tokens.append(int(token))
                if len(tokens) >= budget:
                    break
            return Marks.from_timer(timer, tokens)

        return measure(loaded.device, body, len(ids))

    return Contender(label, "ngram" if lookup else "llamacpp", "llamacpp", run_once, twin=twin, gamma=lookup,
                     settings={**_settings(config), "threads": threads, "llama_cpp": llama_cpp.__version__})
