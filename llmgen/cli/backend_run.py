"""`--backend hf|vllm` for `generate` and `speculate`: the options, and running one prompt on vLLM.

`hf` is llmgen's own decoding and needs nothing here. With `vllm`, the resolved settings go through
`backends.vllm.translate` (which refuses what vLLM cannot do exactly) and the outputs come back as the
same `SequenceResult`s, printed by the same renderers, so `--json` rows look alike on both backends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from llmgen.backends import BACKENDS
from llmgen.cli import common
from llmgen.cli.options import DecodingFlags, ModelOptions, OutputOptions, group, option
from llmgen.cli.output import make_renderer
from llmgen.decoding.config import DecodingConfig, Resolved
from llmgen.errors import UsageError
from llmgen.loading import models

if TYPE_CHECKING:
    from llmgen.backends import vllm as vllm_backend
    from llmgen.decoding.batch import Decoder, OnDone, OnRowError, Row
    from llmgen.loading.loaded import ModelInfo

PANEL = "Backend"
EngineOptions = dict[str, object]  # vLLM's engine keys (`--vllm-option`, a preset's [backend.vllm])


@dataclass(frozen=True)
class BackendOptions:
    backend: str | None = None
    vllm_option: Sequence[str] | None = None


@dataclass(frozen=True)
class RayOptions:
    ray: str | None = None
    ray_actors: int = 2
    ray_threads: int = 1
    ray_retries: int = 2



BACKEND = group(BackendOptions, [
    option("backend", Annotated[str | None, typer.Option(
        "--backend", metavar="hf|vllm", rich_help_panel=PANEL, show_default="hf, or the preset's backend",
        help="hf: llmgen's own decoding. vllm: the same settings run by vLLM (tensor- and pipeline-parallel "
             "models on GPUs; extra llmgen\\[vllm]); what vLLM cannot do exactly is refused.")], None),
    option("vllm_option", Annotated[list[str] | None, typer.Option(
        "--vllm-option", metavar="KEY=VALUE", rich_help_panel=PANEL, show_default="none",
        help="A vLLM engine key, repeatable: tensor_parallel_size, pipeline_parallel_size, "
             "distributed_executor_backend, gpu_memory_utilization, max_model_len (over the preset's "
             "\\[backend.vllm]).")], None),
])


def choose(sampling: DecodingFlags, backend: BackendOptions) -> tuple[str, EngineOptions]:
    """The backend and its engine options: flags over the preset's `[backend]` table, default hf."""
    from llmgen import presets

    preset = presets.load(sampling.preset) if sampling.preset else None
    name = backend.backend or (preset.backend if preset else None) or "hf"
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    options: EngineOptions = dict(preset.backend_options) if preset else {}
    for item in backend.vllm_option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--vllm-option {item!r}: use KEY=VALUE")
        options[key.strip()] = _number(value.strip())
    if options and name != "vllm":
        raise UsageError("vLLM engine options need --backend vllm")
    if name == "vllm" and any(sampling.given.get(k) for k in ("schema", "json_object", "regex", "choice", "grammar")):
        raise UsageError("a constraint (constrained output) is not mapped to vLLM yet; use --backend hf")
    if not options:
        return name, {}
    from llmgen.backends import vllm as vllm_backend

    return name, vllm_backend.check_engine_options(options, "--vllm-option")


def _number(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def tokenizer_only(model_opts: ModelOptions) -> ModelInfo:
    """What the driver of a vLLM run needs of the model, without its weights (which may not fit here)."""
    with common.libraries_speak(model_opts):
        return models.model_info(model_opts.model, offline=model_opts.offline,
                                 trust_remote_code=model_opts.trust_remote_code, progress=common.spinner)


def _request(light: ModelInfo, config: DecodingConfig, ids: list[int], model_opts: ModelOptions,
             engine_options: EngineOptions, draft: vllm_backend.Draft | None = None,
             logprobs: int | None = None) -> vllm_backend.VllmRequest:
    from llmgen.backends import vllm as vllm_backend
    from llmgen.decoding.sequence import token_budget

    return vllm_backend.translate(
        config, str(light.path), budget=token_budget(len(ids), config, light.context_length), draft=draft,
        engine_options=engine_options, dtype=model_opts.dtype, quant=model_opts.quant,
        trust_remote_code=model_opts.trust_remote_code, logprobs=logprobs)


def vllm_decoder(light: ModelInfo, resolved: Resolved, model_opts: ModelOptions,
                 engine_options: EngineOptions) -> Decoder:
    """A `batch.Decoder` for --input on vLLM: every row in one `LLM.generate` call, each with its own
    sampling parameters (rows may carry their own decoding keys). Sampled rows are vLLM's own draws:
    with --seed, row i gets seed + i."""
    from llmgen.backends import vllm as vllm_backend

    def decode(rows: Iterable[Row], on_done: OnDone, on_error: OnRowError) -> None:
        batch = []
        for row in rows:
            if row.matcher is not None:
                on_error(row, "constrained output is not mapped to vLLM yet; use --backend hf")
                continue
            config = row.config
            if config.seed is not None:
                config = config.replace(seed=config.seed + row.key)
            try:
                batch.append((row, _request(light, config, row.prompt_ids, model_opts, engine_options)))
            except UsageError as err:  # a row's own keys vLLM cannot run fail that row only
                on_error(row, str(err))
        if not batch:
            return
        outputs, stats = vllm_backend.generate(batch[0][1], [row.prompt_ids for row, _ in batch],
                                               [request.params for _, request in batch])
        for (row, _), outs in zip(batch, outputs):
            on_done(row, outs[0].result(row.prompt_ids, stats))

    return decode


def ray_decoder(ray: RayOptions, model_opts: ModelOptions, batch_size: int) -> Decoder:
    """A `batch.Decoder` for --input on Ray actors (`distributed.ray`), checked before any loading."""
    from llmgen.distributed.ray import decode_on_ray, import_ray

    import_ray()
    address = ray.ray or "local"  # the plan runs on Ray only when --ray is given

    def decode(rows: Iterable[Row], on_done: OnDone, on_error: OnRowError) -> None:
        decode_on_ray(rows, model=model_opts.model, load_options=load_options(model_opts), address=address,
                      actors=ray.ray_actors, threads=ray.ray_threads, batch_size=batch_size,
                      retries=ray.ray_retries, on_done=on_done, on_error=on_error)

    return decode


def run_vllm(text: str, resolved: Resolved, model_opts: ModelOptions, output: OutputOptions,
             engine_options: EngineOptions, draft: vllm_backend.Draft | None = None,
             logprobs: int | None = None) -> None:
    """One prompt (and its -n samples, or its beams) through vLLM, printed like llmgen's own runs."""
    from llmgen.backends import vllm as vllm_backend
    from llmgen.decoding.processors.tables import build_tables
    from llmgen.decoding.sequence import encode_prompt

    config = resolved.config
    light = tokenizer_only(model_opts)
    ids = encode_prompt(light, text, output.chat, output.system, config.template_kwargs())
    build_tables(config, light.tokenizer, ())  # token ids of --logit-bias and the like, against the vocabulary
    request = _request(light, config, ids, model_opts, engine_options, draft, logprobs)
    outputs, stats = vllm_backend.generate(request, [ids])
    chosen = outputs[0][:config.n]
    renderer = make_renderer(output.json, output.quiet)
    for index, out in enumerate(chosen):
        renderer.begin(index, len(chosen))
        if out.text:
            renderer.text(out.text, "target")
        renderer.end(out.result(ids, stats))


RAY = group(RayOptions, [
    option("ray", Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", rich_help_panel=PANEL, show_default="off",
        help="With --input: shard the prompts over Ray actors, each running llmgen's own batched decoding. ADDRESS: "
             "local (the default when --ray has no value: start a Ray instance here), auto (join a running cluster) "
             "or ray://HOST:PORT (extra llmgen\\[ray]).")], None),
    option("ray_actors", Annotated[int, typer.Option(
        "--ray-actors", metavar="N", rich_help_panel=PANEL, min=1,
        help="Actors, each loading the model once.")], 2),
    option("ray_threads", Annotated[int, typer.Option(
        "--ray-threads", metavar="N", rich_help_panel=PANEL, min=1, help="torch threads per actor.")], 1),
    option("ray_retries", Annotated[int, typer.Option(
        "--ray-retries", metavar="N", rich_help_panel=PANEL, min=0,
        help="Times a chunk whose actor died is tried again on a fresh actor before its prompts get "
             "error rows.")], 2),
])


def load_options(model_opts: ModelOptions) -> dict[str, object]:
    """What an actor needs to load the model as this process did."""
    return {key: getattr(model_opts, key) for key in ("device", "dtype", "quant", "offline", "allow_pickle",
                                             "trust_remote_code", "engine", "threads")}

