"""`llmgen serve`: the OpenAI HTTP API over llmgen's decoding (`llmgen/serve`, docs/serve.md)."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from llmgen.cli import common
from llmgen.cli.options import MODEL, DecodingFlags, ModelOptions, group, with_options
from llmgen.cli.speculate import SPECULATIVE, SpeculativeOptions, _load_draft, suffix_store
from llmgen.decoding.plan import SUFFIX, check_drafting
from llmgen.errors import UsageError

PANEL = "Server"
INSTALL_HINT = "llmgen serve needs its extra: pip install 'llmgen[serve]'"


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 16
    model_name: str | None = None
    grace: float = 10.0
    preset: str | None = None
    prefix_cache_mb: float = 1024.0
    prefill_chunk: int = 512
    prompt_cache_dir: Path | None = None


def _option(name: str, annotation: Any, default: object) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


SERVER = group(ServerOptions, [
    _option("host", Annotated[str, typer.Option(
        "--host", rich_help_panel=PANEL,
        help="The address to bind. The default serves this machine only; 0.0.0.0 serves every interface.")],
        "127.0.0.1"),
    _option("port", Annotated[int, typer.Option("--port", rich_help_panel=PANEL, help="The TCP port.")], 8000),
    _option("api_key", Annotated[str | None, typer.Option(
        "--api-key", envvar="LLMGEN_API_KEY", rich_help_panel=PANEL, show_default="none (no key needed)",
        help="Require 'Authorization: Bearer KEY' on every /v1 route (401 otherwise).")], None),
    _option("max_batch", Annotated[int, typer.Option(
        "--max-batch", rich_help_panel=PANEL,
        help="The most rows decoded together; a request's n counts its rows. More requests wait their turn.")], 16),
    _option("model_name", Annotated[str | None, typer.Option(
        "--model-name", rich_help_panel=PANEL, show_default="the --model value",
        help="The model id clients ask for (GET /v1/models).")], None),
    _option("grace", Annotated[float, typer.Option(
        "--grace", rich_help_panel=PANEL,
        help="On SIGTERM or Ctrl-C: seconds to let requests in flight finish before they are cancelled.")], 10.0),
    _option("preset", Annotated[str | None, typer.Option(
        "--preset", "-p", rich_help_panel=PANEL, show_default="none",
        help="A preset (name or TOML file): the settings a request's own fields override.")], None),
    _option("prefix_cache_mb", Annotated[float, typer.Option(
        "--prefix-cache-mb", rich_help_panel=PANEL, show_default="1024; 0 turns it off",
        help="Keep the KV cells of recent requests (prompt and reply) up to this many MB, least recently used "
             "out first: a request that begins the same way (the next chat turn, a shared system prompt) "
             "starts from them instead of prefilling again.")], 1024.0),
    _option("prefill_chunk", Annotated[int, typer.Option(
        "--prefill-chunk", rich_help_panel=PANEL, show_default="512; 0: whole prompts at once",
        help="Prefill a long prompt at most this many tokens per step of the running batch (fewer: about 1.5 "
             "steps' worth), so that running streams go on while it is read.")], 512),
    _option("prompt_cache_dir", Annotated[Path | None, typer.Option(
        "--prompt-cache-dir", metavar="DIR", rich_help_panel=PANEL, show_default="none (the cache lives in memory)",
        help="Keep the prefix cache across restarts: read it from DIR at start, write it there at shutdown "
             "(a folder per model; every file checked against the model, engine and tokens).")], None),
])

_SPEC = {p.name: p for p in SPECULATIVE.params}
DRAFT = SPECULATIVE.only("draft", "gamma", "ngram_max", "ngram_min", "draft_dtype", "draft_quant").swap(
    _option("draft", Annotated[str | None, typer.Option(
        "--draft", "-d", rich_help_panel="Speculative decoding", show_default="none (plain decoding)",
        help=_SPEC["draft"].annotation.__metadata__[0].help)], None))


@with_options(server=SERVER, model_opts=MODEL, spec=DRAFT)
def serve(*, server: ServerOptions, model_opts: ModelOptions, spec: SpeculativeOptions) -> None:
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) and /health.

    Concurrent requests are rows of one batch: a request joins it at the next step and leaves when done.
    A greedy request returns what 'llmgen generate --greedy' returns for the same messages and settings.

    With --draft, a request decodes speculatively while it is alone; it joins the batch when another arrives.

    Examples:

      llmgen serve --model smollm2-135m --port 8000

      llmgen serve --preset precise --api-key secret --max-batch 8

      llmgen serve --draft ngram --gamma auto
    """
    try:
        from llmgen.serve import server as http
        from llmgen.serve.scheduler import Drafting
    except ImportError as err:
        if err.name in ("uvicorn", "starlette"):
            raise UsageError(INSTALL_HINT) from None
        raise
    if server.max_batch < 1:
        raise UsageError(f"--max-batch must be at least 1, got {server.max_batch}")
    if not 0 < server.port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, got {server.port}")
    if server.grace < 0:
        raise UsageError(f"--grace must be >= 0 seconds, got {server.grace}")
    if server.prefix_cache_mb < 0:
        raise UsageError(f"--prefix-cache-mb must be >= 0 (0 turns the cache off), got {server.prefix_cache_mb}")
    if server.prompt_cache_dir is not None and server.prefix_cache_mb == 0:
        raise UsageError("--prompt-cache-dir keeps the prefix cache: it needs --prefix-cache-mb above 0")
    if server.prefill_chunk < 0:
        raise UsageError(f"--prefill-chunk must be >= 0 (0: whole prompts), got {server.prefill_chunk}")
    from llmgen.decoding.speculative import check_compatible

    resolved = common.resolve_settings(DecodingFlags(preset=server.preset))
    drafting = None
    if spec.draft:
        gamma = check_drafting(spec.gamma, spec.ngram_max, spec.ngram_min)
    loaded = common.load_model(model_opts.model, model_opts)
    if spec.draft:
        draft = _load_draft(spec.draft, spec.draft_dtype, spec.draft_quant, model_opts)
        if draft is not None:
            check_compatible(loaded, draft)
        drafting = Drafting(draft, gamma, spec.ngram_max, spec.ngram_min,  # suffix: one store for all requests
                            suffix_store(loaded, None) if spec.draft == SUFFIX else None)
    service = http.build_service(loaded, server.model_name or model_opts.model, resolved.config,
                                 server.max_batch, server.api_key, drafting, server.prefix_cache_mb,
                                 server.prefill_chunk, server.prompt_cache_dir)
    where = f"http://{server.host}:{server.port}"
    print(f"llmgen: serving {service.model_id!r} at {where}/v1 (engine {loaded.engine.name}, "
          f"up to {server.max_batch} rows; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        http.serve(service, server.host, server.port, server.grace)
    except OSError as err:
        raise UsageError(f"cannot listen on {server.host}:{server.port}: {err.strerror or err}") from None
    except SystemExit as exit_:  # uvicorn exits 1 when it cannot bind
        if exit_.code:
            raise UsageError(f"cannot listen on {server.host}:{server.port} (is the port in use?)") from None
    print("llmgen: server stopped", file=sys.stderr, flush=True)
