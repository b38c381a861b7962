"""An in-process stand-in for the `vllm` module (vLLM is CUDA-only on PyPI and pins its own torch, so it
cannot be installed beside llmgen's): it records the arguments it is given and returns canned outputs
and speculative metrics, in the shapes of vLLM's `LLM`, `SamplingParams`, `BeamSearchParams` and
`vllm.v1.metrics.reader` objects."""

from __future__ import annotations

import types
from types import SimpleNamespace
from typing import Any


def install(monkeypatch: Any, tokens: list[int], text: str, finish_reason: str = "length",
            stop_reason: Any = None, spec: dict[str, Any] | None = None) -> SimpleNamespace:
    """Put a fake `vllm` in sys.modules; returns the record of what llmgen asked of it."""
    record = SimpleNamespace(engine=None, params=None, prompts=None, beam=False, metrics_calls=0)
    before = {"vllm:spec_decode_num_drafts": 7, "vllm:spec_decode_num_draft_tokens": 21,
              "vllm:spec_decode_num_accepted_tokens": 10, "per_pos": [6, 3, 1]}
    after = {key: value for key, value in before.items()}
    if spec:
        after = {key: (value + spec[key] if key != "per_pos" else [a + b for a, b in zip(value, spec[key])])
                 for key, value in before.items()}

    def metrics(state: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(name=name, value=value) for name, value in state.items() if name != "per_pos"] + [
            SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=list(state["per_pos"])),
            SimpleNamespace(name="vllm:prompt_tokens", value=123)]

    class LLM:
        def __init__(self, **engine: Any) -> None:
            record.engine = engine

        def get_metrics(self) -> list[Any]:
            record.metrics_calls += 1
            return metrics(before if record.metrics_calls == 1 else after)

        def generate(self, prompts: list[Any], params: Any) -> list[Any]:
            per_prompt = params if isinstance(params, list) else [params] * len(prompts)
            assert len(per_prompt) == len(prompts)
            record.prompts, record.params = prompts, per_prompt[0].kwargs
            record.all_params = [p.kwargs for p in per_prompt]

            def outs(p: Any) -> list[Any]:
                return [SimpleNamespace(token_ids=list(tokens), text=text, finish_reason=finish_reason,
                                        stop_reason=stop_reason) for _ in range(p.kwargs.get("n", 1))]

            return [SimpleNamespace(outputs=outs(p)) for p in per_prompt]

        def beam_search(self, prompts: list[Any], params: Any) -> list[Any]:
            record.prompts, record.params, record.beam = prompts, params.kwargs, True
            width = params.kwargs["beam_width"]
            return [SimpleNamespace(sequences=[SimpleNamespace(tokens=[*p["prompt_token_ids"], *tokens], text=text,
                                                               finish_reason=finish_reason, stop_reason=stop_reason)
                                               for _ in range(width)]) for p in prompts]

    class Params:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.BeamSearchParams = LLM, Params, Params
    monkeypatch.setitem(__import__("sys").modules, "vllm", module)
    return record
