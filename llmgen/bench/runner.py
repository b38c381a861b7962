"""A benchmark run: build the contenders, run them interleaved, and summarize each one.

For every prompt set, the contenders are:
- `plain`: llmgen plain decoding with the given settings (greedy by default). Every other row is
  measured against it (`× plain`).
- `penalties`: plain decoding plus OpenAI frequency and presence penalties (0.5 each unless given),
  to show what they buy in the quality columns.
- `ngram γ=…`, `suffix γ=…`, `draft:REF γ=…`: speculative decoding, one row per draft and γ.
- `beam B=…`: beam search.
- with `baseline_hf`, HF `generate()` twins of the rows it can mirror: plain, prompt lookup
  (`prompt_lookup_num_tokens=10`) for the n-gram draft, `assistant_model` for a model draft, and
  `num_beams` for beam search. A llmgen row's `× HF` is its speed over its twin's.

Runs are interleaved (`stats.schedule`): warm-up, then A B C A B C ..., run i reading prompt i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgen.bench import contenders as cs
from llmgen.bench.prompts import PromptSet
from llmgen.bench.stats import Summary, peak_rss_bytes, quality, schedule, summarize
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sequence import encode_prompt
from llmgen.decoding.speculative.runner import shares_vocabulary
from llmgen.errors import PromptError, UsageError
from llmgen.loading.models import LoadedModel

# Called before each run: (runs done, runs in all, what runs now).
OnProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Plan:
    """What to measure. `drafts` are loaded models (for the `draft` strategy, or `cross` for those with
    another vocabulary than the target's)."""

    prompt_sets: Sequence[PromptSet]
    strategies: Sequence[str] = ("plain",)
    gammas: Sequence[int | str] = (5,)
    drafts: Sequence[LoadedModel] = ()
    runs: int = 5
    warmup: int = 1
    baseline_hf: bool = False
    num_beams: int = 4
    chat: bool | None = None
    system: str | None = None
    int4: LoadedModel | None = None  # the target in 4 bits, for the `int4` strategy
    llamacpp_gguf: str | None = None  # a GGUF file: add llama.cpp on it as a baseline (greedy)
    engines: Sequence[LoadedModel] = ()  # the target on further engines (--engine torch,llamacpp): plain, ngram

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise UsageError(f"--runs must be >= 1, not {self.runs}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, not {self.warmup}")
        if self.num_beams < 2 and "beam" in self.strategies:
            raise UsageError(f"--num-beams must be >= 2 for the beam strategy, not {self.num_beams}")
        if not self.prompt_sets:
            raise PromptError("--prompts: no prompt sets")
        if not self.strategies:
            raise UsageError("--strategies: give at least one strategy")
        for name in self.strategies:
            cs.check_strategy(name)
        for gamma in self.gammas:
            if gamma != "auto" and (not isinstance(gamma, int) or gamma < 1):
                raise UsageError(f"--gamma: {gamma!r} must be an integer >= 1 or 'auto'")


@dataclass
class Row:
    """One contender on one prompt set: its runs and their summaries."""

    prompt_set: str
    contender: cs.Contender
    records: list[cs.RunRecord] = field(default_factory=list)
    note: str | None = None  # why a row has no runs (an HF twin that cannot mirror the settings)

    def summary(self, measure: str) -> Summary | None:
        return summarize([getattr(r, measure) for r in self.records])

    def extra_summary(self, key: str) -> Summary | None:
        return summarize([r.extra.get(key) for r in self.records])

    def quality(self) -> dict[str, Summary | None]:
        per_run = [quality(r.token_ids) for r in self.records]
        return {key: summarize([q[key] for q in per_run]) for key in ("distinct_2", "distinct_3",
                                                                      "repeated_3gram_rate")}


@dataclass
class Result:
    model: LoadedModel
    config: DecodingConfig
    plan: Plan
    rows: list[Row]
    calibration: dict[str, Any] = field(default_factory=dict)  # forward costs behind predicted speedups
    peak_rss_bytes: int = 0  # of the process, when the runs were done (before any roofline measurement)
    kl: dict[str, float] = field(default_factory=dict)  # row label -> mean KL(float || row) on the corpus (int4 rows)


def encode(loaded: LoadedModel, text: str, chat: bool | None, system: str | None = None) -> list[int]:
    """Prompt ids as `llmgen generate` builds them: the chat template when the tokenizer has one."""
    return encode_prompt(loaded, text, chat, system)


def gamma_label(gamma: int | str) -> str:
    return f"γ={gamma}"


def build(loaded: LoadedModel, config: DecodingConfig, plan: Plan) -> list[cs.Contender]:
    """The contenders of one prompt set, llmgen rows each followed by its HF twin; with further engines
    (`plan.engines`), every label names its engine ("plain · llamacpp") and each engine has its own rows."""
    if not plan.engines:
        return _build(loaded, config, plan)
    # llama.cpp's own rows pair with the llama.cpp engine's rows when it is one of the engines
    on_llamacpp = "llamacpp" in {m.engine.name for m in (loaded, *plan.engines)}

    def gguf_for(model: LoadedModel) -> str | None:
        return plan.llamacpp_gguf if model.engine.name == "llamacpp" or not on_llamacpp else None

    main = dataclasses.replace(plan, engines=(), llamacpp_gguf=gguf_for(loaded))
    out = _tagged(_build(loaded, config, main), loaded.engine.name)
    for other in plan.engines:
        strategies = [s for s in plan.strategies if s in ("plain", "ngram", "suffix")]
        sub = dataclasses.replace(main, strategies=strategies, drafts=(), int4=None, llamacpp_gguf=gguf_for(other))
        out += _tagged(_build(other, config, sub), other.engine.name)
    return out


def _tagged(contenders: list[cs.Contender], engine: str) -> list[cs.Contender]:
    return [dataclasses.replace(c, label=f"{c.label} · {engine}", twin=f"{c.twin} · {engine}" if c.twin else None)
            for c in contenders]


def _build(loaded: LoadedModel, config: DecodingConfig, plan: Plan) -> list[cs.Contender]:
    out: list[cs.Contender] = []

    def with_twin(row: cs.Contender, twin: Callable[[], cs.Contender] | None) -> None:
        out.append(row)
        if plan.baseline_hf and twin is not None:
            out.append(twin())

    hf_ok = cs.hf_unsupported(config, loaded) is None

    def llamacpp(twin: str) -> None:
        if plan.llamacpp_gguf:
            out.append(cs.llamacpp(loaded, config, plan.llamacpp_gguf, "llama.cpp (same GGUF)", twin))

    for strategy in plan.strategies:
        if strategy == "plain":
            with_twin(cs.plain(loaded, config), (lambda: cs.hf(loaded, config, "HF generate", "plain"))
                      if hf_ok else None)
            if "int4" not in plan.strategies or plan.int4 is None:
                llamacpp("plain")
        elif strategy == "int4" and plan.int4 is not None:
            out.append(cs.plain(plan.int4, config, label="plain int4", strategy="int4"))
            llamacpp("plain int4")
        elif strategy == "penalties":
            penalized = config.replace(**{k: getattr(config, k) or v for k, v in cs.PENALTIES.items()})
            label = f"penalties F={penalized.frequency_penalty:g} P={penalized.presence_penalty:g}"
            out.append(cs.plain(loaded, penalized, label=label, strategy="penalties"))
        elif strategy == "ngram":
            for gamma in plan.gammas:
                label = f"ngram {gamma_label(gamma)}"
                out.append(cs.speculative(loaded, config, None, gamma, label))
            if plan.baseline_hf and hf_ok:
                out.append(cs.hf(loaded, config, f"HF prompt lookup {cs.HF_PROMPT_LOOKUP}", "ngram",
                                 strategy="ngram", extra={"prompt_lookup_num_tokens": cs.HF_PROMPT_LOOKUP},
                                 gamma=cs.HF_PROMPT_LOOKUP))
            if plan.llamacpp_gguf:
                out.append(cs.llamacpp(loaded, config, plan.llamacpp_gguf,
                                       f"llama.cpp prompt lookup {cs.HF_PROMPT_LOOKUP}", "ngram",
                                       lookup=cs.HF_PROMPT_LOOKUP))
        elif strategy == "suffix":
            for gamma in plan.gammas:
                out.append(cs.speculative(loaded, config, None, gamma, f"suffix {gamma_label(gamma)}", suffix=True))
        elif strategy == "cross":
            for draft in plan.drafts:
                if not shares_vocabulary(loaded, draft):
                    out.extend(cs.speculative(loaded, config, draft, gamma, f"cross {draft.ref} {gamma_label(gamma)}")
                               for gamma in plan.gammas)
        elif strategy == "draft":
            for draft in (d for d in plan.drafts if shares_vocabulary(loaded, d)):
                for gamma in plan.gammas:
                    label = f"draft {draft.ref} {gamma_label(gamma)}"
                    out.append(cs.speculative(loaded, config, draft, gamma, label))
                if plan.baseline_hf and hf_ok and draft.quant == "none":
                    out.append(cs.hf(loaded, config, f"HF assisted ({draft.ref})", f"draft {draft.ref}",
                                     strategy="draft", extra={"assistant_model": draft.model}, draft=draft.ref))
        elif strategy == "beam":
            label = f"beam B={plan.num_beams}"
            with_twin(cs.beam(loaded, config, plan.num_beams, label),
                      (lambda: cs.hf(loaded, config.replace(temperature=0.0), f"HF beam B={plan.num_beams}", label,
                                     strategy="beam", extra={"num_beams": plan.num_beams, "early_stopping": False}))
                      if hf_ok else None)
    return out


def run(loaded: LoadedModel, config: DecodingConfig, plan: Plan,
        on_progress: OnProgress | None = None) -> Result:
    """Measure every contender on every prompt set, interleaved; the warm-up runs are not kept."""
    encoded = [[encode(loaded, text, plan.chat, plan.system) for text in prompt_set.prompts]
               for prompt_set in plan.prompt_sets]
    rows: list[Row] = []
    jobs: list[tuple[Row, list[list[int]]]] = []
    for prompt_set, ids in zip(plan.prompt_sets, encoded):
        for contender in build(loaded, config, plan):
            row = Row(prompt_set.name, contender)
            rows.append(row)
            jobs.append((row, ids))
    slots = schedule(len(jobs), plan.runs, plan.warmup)
    for done, slot in enumerate(slots):
        row, ids = jobs[slot.config]
        if on_progress:
            phase = "warm-up" if slot.warmup else f"run {slot.run + 1}/{plan.runs}"
            on_progress(done, len(slots), f"{row.prompt_set}: {row.contender.label} ({phase})")
        record = row.contender.run_once(ids[slot.run % len(ids)])
        if not slot.warmup:
            row.records.append(record)
    if on_progress:
        on_progress(len(slots), len(slots), "done")
    calibration = (calibrate(loaded, plan, encoded[0][0])
                   if "draft" in plan.strategies and any(shares_vocabulary(loaded, d) for d in plan.drafts) else {})
    peak = peak_rss_bytes()
    kl = {}
    if plan.int4 is not None and any(r.contender.strategy == "int4" and r.contender.engine == "llmgen" for r in rows):
        from llmgen.evaluate.divergence import corpus_kl  # the quality column: docs/evaluate.md

        kl["plain int4"] = corpus_kl(loaded, plan.int4)
    return Result(loaded, config, plan, rows, calibration, peak, kl)


def calibrate(loaded: LoadedModel, plan: Plan, prompt_ids: list[int], repeats: int = 7) -> dict[str, Any]:
    """Forward costs for the predicted speedup E / (γ·c + v) of each model draft:

        c      = one draft step over one target step (both over one token, after the same prompt)
        v(k)   = one target forward over k tokens over one target forward over 1 token

    NOTE: the timings are interleaved (1, k..., draft, 1, k..., draft, ...) and the minimum of each
    is kept: on a busy machine the minimum is the estimate least moved by other processes.
    """
    ks = sorted({g + 1 for g in plan.gammas if isinstance(g, int)})  # γ=auto varies: no prediction
    target = cs.ForwardClock(loaded, prompt_ids)
    drafts = {d.ref: cs.ForwardClock(d, prompt_ids) for d in plan.drafts if shares_vocabulary(loaded, d)}
    times: dict[tuple[str, Any], list[float]] = {}
    for _ in range(repeats + 1):  # the first round is a warm-up
        for k in [1, *ks]:
            times.setdefault(("target", k), []).append(target.seconds(k))
        for ref, clock in drafts.items():
            times.setdefault(("draft", ref), []).append(clock.seconds(1))
    best = {key: min(values[1:]) for key, values in times.items()}
    one = best[("target", 1)]
    return {"target": {"step_seconds": one, "v": {k: best[("target", k)] / one for k in ks}},
            "drafts": {ref: {"step_seconds": best[("draft", ref)], "c": best[("draft", ref)] / one}
                       for ref in drafts}}


def expected_tokens_per_forward(alpha: float, gamma: int) -> float:
    """E = (1 - α^(γ+1)) / (1 - α): tokens per target forward when each draft token is accepted with α."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, gamma: int, c: float, v: float) -> float:
    """E / (γ·c + v), the speedup over plain decoding that α, c and v predict."""
    return expected_tokens_per_forward(alpha, gamma) / (gamma * c + v)
