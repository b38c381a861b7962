"""`--backend vllm`: llmgen's resolved settings as a vLLM run, for models one machine cannot hold.

`translate` is pure: settings in, `VllmRequest` out (the `LLM(...)` engine arguments and the
`SamplingParams` / `BeamSearchParams` keywords), or a `UsageError` naming the option vLLM cannot run
exactly. Nothing is silently changed. The known differences, from vLLM's docs and source:

- frequency and presence penalties count output tokens only in vLLM: `--penalty-scope all` or a
  `--penalty-window` with them is refused;
- vLLM's repetition penalty counts the prompt and the output: it is exact only with `--penalty-scope all`
  and no window;
- `min_p` is refused with speculative decoding (vLLM's speculative sampler does not apply it);
- vLLM's beam search scores a hypothesis by cumulative log-prob / (prompt + output length) ** L, where
  HF and llmgen divide by the output length: beam search is refused unless `--length-penalty 0`, and
  with stop strings, penalties, `--no-repeat-ngram-size` or a non-default `--early-stopping`, which
  vLLM's beam search does not have;
- `--gamma auto` has no vLLM counterpart (it needs a fixed `num_speculative_tokens`);
- the token controls map one to one (`logit_bias`, `min_tokens`, `stop_token_ids`, `bad_words`,
  `allowed_token_ids`), but not with speculative decoding, whose sampler does not apply them (only
  `stop_token_ids`, a stop rule, is kept there); vLLM has none of typical-p, epsilon, eta, top-n-sigma,
  DRY, XTC, Mirostat, dynamic temperature, a reasoning budget or another order of the stages: each
  is refused by name (`UNSUPPORTED`). Template switches work: llmgen renders the prompt itself;
- vLLM's default `max_tokens` (16) never applies: llmgen always passes its own budget, and
  `generation_config="vllm"` keeps the model's generation_config.json from changing defaults.

`generate` runs a request on token ids with the `vllm` module (imported there, so that the rest of
llmgen works without it) and reads speculative statistics from `LLM.get_metrics()`, as the difference
before and after the run, under llmgen's own statistics names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmgen.decoding.config import DEFAULTS, DecodingConfig
from llmgen.decoding.sequence import SequenceResult
from llmgen.errors import UsageError

INSTALL = "pip install 'llmgen[vllm]' (vLLM is CUDA-only on PyPI and brings its own torch)"

# The `[backend.vllm]` table of a preset (or --vllm-option KEY=VALUE): engine-only keys and their checks.
ENGINE_KEYS: dict[str, tuple[type, Any]] = {
    "tensor_parallel_size": (int, lambda v: v >= 1),
    "pipeline_parallel_size": (int, lambda v: v >= 1),
    "distributed_executor_backend": (str, lambda v: v in ("ray", "mp", "uni", "external_launcher")),
    "gpu_memory_utilization": (float, lambda v: 0 < v <= 1),
    "max_model_len": (int, lambda v: v >= 1),
}

SPEC_METRICS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                "vllm:spec_decode_num_accepted_tokens")
PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos"


@dataclass(frozen=True)
class Draft:
    """What `speculate` asked for: 'ngram' or a draft model's path, and the draft length."""

    kind: str  # "ngram" or "model"
    gamma: int | str
    model: str | None = None
    ngram_max: int = 4
    ngram_min: int = 2


@dataclass(frozen=True)
class VllmRequest:
    engine: dict[str, Any]  # LLM(**engine)
    params: dict[str, Any]  # SamplingParams(**params), or BeamSearchParams(**params) when beam
    beam: bool = False
    notes: list[str] = field(default_factory=list)


def check_engine_options(options: dict[str, Any], where: str = "[backend.vllm]") -> dict[str, Any]:
    """The engine-only keys, checked: an unknown key, a wrong type or an out-of-range value is a UsageError."""
    checked = {}
    for key, value in options.items():
        if key not in ENGINE_KEYS:
            raise UsageError(f"{where}: unknown vLLM engine key {key!r} (known: {', '.join(ENGINE_KEYS)})")
        kind, ok = ENGINE_KEYS[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
            raise UsageError(f"{where}: invalid value for {key}: {value!r}")
        checked[key] = value
    return checked


# llmgen stages vLLM's SamplingParams does not have: (the option, whether the config turns it on).
UNSUPPORTED = (
    ("--typical-p", lambda c: c.typical_p < 1.0),
    ("--epsilon-cutoff", lambda c: c.epsilon_cutoff > 0),
    ("--eta-cutoff", lambda c: c.eta_cutoff > 0),
    ("--top-n-sigma", lambda c: c.top_n_sigma > 0),
    ("--dry-multiplier (DRY)", lambda c: c.dry_multiplier > 0),
    ("--xtc-probability (XTC)", lambda c: c.xtc_probability > 0),
    ("--mirostat", lambda c: c.mirostat != 0),
    ("--dynatemp-range", lambda c: c.dynatemp_range > 0),
    ("--reasoning-budget", lambda c: c.reasoning_budget >= 0),
    ("--samplers (another order)", lambda c: c.samplers != DEFAULTS.samplers),
)


def _refuse(option: str, why: str) -> UsageError:
    return UsageError(f"--backend vllm: {option} {why}; use --backend hf (llmgen's own decoding) for it")


def translate(config: DecodingConfig, model: str, *, budget: int, draft: Draft | None = None,
              engine_options: dict[str, Any] | None = None, dtype: str = "auto", quant: str = "none",
              trust_remote_code: bool = False, logprobs: int | None = None) -> VllmRequest:
    """llmgen's resolved settings as vLLM's engine arguments and sampling parameters (pure)."""
    if quant not in ("none", "auto"):
        raise _refuse(f"--quant {quant}", "is llmgen's own CPU path")
    if config.no_repeat_ngram_size:
        raise _refuse("--no-repeat-ngram-size", "has no vLLM counterpart")
    engine: dict[str, Any] = {"model": model, "tokenizer": model, "dtype": dtype, "generation_config": "vllm",
                              "trust_remote_code": trust_remote_code,
                              **check_engine_options(engine_options or {})}
    if config.seed is not None:
        engine["seed"] = config.seed
    for option, on in UNSUPPORTED:
        if on(config):
            raise _refuse(option, "has no vLLM counterpart")
    if config.num_beams > 1:
        if config.uses_token_controls or config.stop_token_ids:
            raise _refuse("token controls with --num-beams", "cannot run: vLLM's beam search has none")
        return VllmRequest(engine, _beam_params(config, budget, draft), beam=True)
    uses_frequency = config.frequency_penalty != 0 or config.presence_penalty != 0
    if uses_frequency and (config.penalty_scope != "generated" or config.penalty_window):
        raise _refuse("--frequency-penalty/--presence-penalty with --penalty-scope all or --penalty-window",
                      "cannot run: vLLM counts output tokens only")
    if config.repetition_penalty != 1.0 and (config.penalty_scope != "all" or config.penalty_window):
        raise _refuse("--repetition-penalty", "counts the prompt too in vLLM: it is exact only with "
                      "--penalty-scope all and no --penalty-window")
    params: dict[str, Any] = {
        "n": config.n, "max_tokens": budget, "ignore_eos": config.ignore_eos, "stop": list(config.stop),
        "frequency_penalty": config.frequency_penalty, "presence_penalty": config.presence_penalty,
        "repetition_penalty": config.repetition_penalty, "seed": config.seed,
    }
    if config.greedy:
        params.update(temperature=0.0, top_k=-1, top_p=1.0, min_p=0.0)
    else:
        params.update(temperature=config.temperature, top_k=config.top_k or -1, top_p=config.top_p,
                      min_p=config.min_p)
    if config.stop_token_ids:
        params["stop_token_ids"] = list(config.stop_token_ids)
    controls = {"logit_bias": dict(config.logit_bias) or None, "min_tokens": config.min_tokens or None,
                "bad_words": list(config.bad_words) or None, "allowed_token_ids": list(config.allowed_token_ids) or None}
    params.update({key: value for key, value in controls.items() if value is not None})
    if logprobs is not None:
        params["logprobs"] = logprobs
    if draft is not None:
        for key, option in (("logit_bias", "--logit-bias"), ("min_tokens", "--min-tokens"),
                            ("bad_words", "--bad-word"), ("allowed_token_ids", "--allowed-token-id")):
            if key in params:
                raise _refuse(option, "is not applied by vLLM's speculative sampler")
        if draft.gamma == "auto":
            raise _refuse("--gamma auto", "has no vLLM counterpart (vLLM drafts a fixed number of tokens)")
        if params["min_p"]:
            raise _refuse("--min-p", "is not applied by vLLM's speculative sampler")
        spec: dict[str, Any] = {"num_speculative_tokens": int(draft.gamma)}
        if draft.kind == "ngram":
            spec.update(method="ngram", prompt_lookup_max=draft.ngram_max, prompt_lookup_min=draft.ngram_min)
        else:
            spec["model"] = draft.model
        engine["speculative_config"] = spec
        engine["disable_log_stats"] = False  # NOTE: vLLM collects the spec_decode metrics only then
    return VllmRequest(engine, params)


def _beam_params(config: DecodingConfig, budget: int, draft: Draft | None) -> dict[str, Any]:
    if draft is not None:
        raise _refuse("beam search", "cannot be combined with speculative decoding")
    if config.length_penalty != 0:
        raise _refuse(f"--length-penalty {config.length_penalty:g}",
                      "cannot run: vLLM's beam search divides by prompt + output length, HF's by the output "
                      "length (they agree only at --length-penalty 0)")
    if config.stop:
        raise _refuse("--stop with --num-beams", "cannot run: vLLM's beam search has no stop strings")
    if config.uses_penalties:
        raise _refuse("penalties with --num-beams", "cannot run: vLLM's beam search has no penalties")
    if config.early_stopping != DEFAULTS.early_stopping:
        raise _refuse(f"--early-stopping {config.early_stopping}", "has no vLLM counterpart")
    return {"beam_width": config.num_beams, "max_tokens": budget, "ignore_eos": config.ignore_eos,
            "length_penalty": 0.0}


# --- running it ------------------------------------------------------------------------------------

@dataclass
class VllmOutput:
    token_ids: list[int]
    text: str
    finish_reason: str  # llmgen's: "length", "stop" or "eos"

    def result(self, prompt_ids: Sequence[int], stats: dict[str, Any]) -> SequenceResult:
        """The output as llmgen's own runs report one."""
        return SequenceResult(self.text, self.token_ids, list(prompt_ids), self.finish_reason,
                              {"prompt_tokens": len(prompt_ids), "generated_tokens": len(self.token_ids), **stats})


def finish_reason(reason: str | None, stop_reason: Any) -> str:
    """vLLM says "stop" both for EOS (stop_reason None) and for a stop string (the string)."""
    if reason == "length":
        return "length"
    return "eos" if stop_reason is None else "stop"


def spec_counts(metrics: Sequence[Any]) -> dict[str, Any]:
    """The speculative counters of `LLM.get_metrics()`, summed over engines: drafts, draft tokens,
    accepted tokens, and accepted tokens per draft position."""
    counts: dict[str, Any] = {name: 0 for name in SPEC_METRICS}
    per_position: list[float] = []
    for metric in metrics:
        if metric.name in counts:
            counts[metric.name] += metric.value
        elif metric.name == PER_POSITION:
            values = list(metric.values)
            per_position = [a + b for a, b in zip(per_position, values)] + values[len(per_position):] \
                if per_position else values
    counts[PER_POSITION] = per_position
    return counts


def spec_stats(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The run's speculative statistics (after - before) under llmgen's names."""
    drafts = after[SPEC_METRICS[0]] - before[SPEC_METRICS[0]]
    draft_tokens = after[SPEC_METRICS[1]] - before[SPEC_METRICS[1]]
    accepted = after[SPEC_METRICS[2]] - before[SPEC_METRICS[2]]
    old = before[PER_POSITION] + [0] * (len(after[PER_POSITION]) - len(before[PER_POSITION]))
    per_position = [int(a - b) for a, b in zip(after[PER_POSITION], old)]
    # rounds that accepted exactly j tokens: accepted at position j - 1 but not at j
    reached = [int(drafts), *per_position, 0]
    histogram = [reached[j] - reached[j + 1] for j in range(len(reached) - 1)]
    return {"target_forwards": int(drafts), "draft_tokens": int(draft_tokens), "accepted_tokens": int(accepted),
            "acceptance_rate": round(accepted / draft_tokens, 4) if draft_tokens else None,
            "mean_gamma": round(draft_tokens / drafts, 3) if drafts else None,
            "acceptance_histogram": histogram if drafts else []}


def generate(request: VllmRequest, prompts: Sequence[Sequence[int]],
             per_prompt: Sequence[dict[str, Any]] | None = None) -> tuple[list[list[VllmOutput]], dict[str, Any]]:
    """Run `request` on each prompt's token ids (with `per_prompt` sampling parameters, one set per
    prompt, when rows differ): per prompt its outputs (n samples, or the beams best first), and the
    run's statistics (seconds, and the speculative counts when speculating)."""
    try:
        import vllm
    except ImportError:
        raise UsageError(f"--backend vllm needs vLLM: {INSTALL}") from None
    llm = vllm.LLM(**request.engine)
    speculative = "speculative_config" in request.engine
    before = spec_counts(llm.get_metrics()) if speculative else None
    started = time.perf_counter()
    if request.beam:
        beam_params = vllm.BeamSearchParams(**request.params)
        results = llm.beam_search([{"prompt_token_ids": list(p)} for p in prompts], beam_params)
        outputs = [[VllmOutput(list(seq.tokens[len(p):]), seq.text or "", finish_reason(seq.finish_reason,
                                                                                       seq.stop_reason))
                    for seq in result.sequences] for p, result in zip(prompts, results)]
    else:
        params: Any = ([vllm.SamplingParams(**p) for p in per_prompt] if per_prompt is not None
                       else vllm.SamplingParams(**request.params))
        results = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
        outputs = [[VllmOutput(list(o.token_ids), o.text, finish_reason(o.finish_reason, o.stop_reason))
                    for o in result.outputs] for result in results]
    stats: dict[str, Any] = {"backend": "vllm", "seconds": round(time.perf_counter() - started, 6)}
    if before is not None:
        stats.update(spec_stats(before, spec_counts(llm.get_metrics())))
    return outputs, stats
