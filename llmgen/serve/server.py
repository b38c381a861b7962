"""Running the app under uvicorn: binding, signals and the graceful shutdown.

SIGTERM or SIGINT (Ctrl-C): uvicorn stops accepting connections and waits for the requests in
flight; after `grace` seconds the rows still decoding are cancelled (they leave the batch at the next
step, and their answers end with an error: "the server is shutting down"); then the lifespan stops
the scheduler. `serve` then returns normally, so
the command exits 0. A second Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from llmgen.serve.app import Service, create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_PREFIX_CACHE_MB = 1024.0  # KV copies of recent requests (SmolLM2-135M's float32 cells: ~46 KB a token)
DEFAULT_PREFILL_CHUNK = 512  # the most tokens of a long prompt prefilled per step (fewer when steps are fast)
BACKSTOP_SECONDS = 5.0  # after the grace period, how long cancelled answers have to end before uvicorn cancels them


class _Server(uvicorn.Server):
    """uvicorn's server, with two changes: at the end of the grace period the scheduler cancels the rows
    still decoding, so that their answers end cleanly (an error event, a 503) before uvicorn's own
    timeout (a few seconds later) would cancel their tasks; and a handled SIGTERM or SIGINT is not
    raised again after the shutdown (uvicorn re-raises it, which the CLI would turn into exit 143 or 130)."""

    def __init__(self, config: uvicorn.Config, service: Service, grace: float) -> None:
        super().__init__(config)
        self.service, self.grace = service, grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.grace, self.service.scheduler.cancel_all)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(service: Service, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                grace: float = DEFAULT_GRACE_SECONDS, log_level: str = "warning") -> _Server:
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level,
                            # NOTE: uvicorn annotates int, and waits any number of seconds (asyncio.wait_for)
                            timeout_graceful_shutdown=grace + BACKSTOP_SECONDS,  # type: ignore[arg-type]
                            lifespan="on", access_log=False)
    return _Server(config, service, grace)


def serve(service: Service, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          grace: float = DEFAULT_GRACE_SECONDS, log_level: str = "warning") -> None:
    """Serve until SIGTERM or SIGINT; returns after the graceful shutdown."""
    make_server(service, host, port, grace, log_level).run()


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(service: Service, host: str = DEFAULT_HOST, port: int | None = None,
            grace: float = DEFAULT_GRACE_SECONDS) -> Iterator[str]:
    """The server in a background thread (tests, benchmarks): yields its base URL, stops on exit."""
    server = make_server(service, host, port or free_port(host), grace)
    thread = threading.Thread(target=server.run, name="llmgen-serve", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        threading.Event().wait(0.02)
    try:
        yield f"http://{host}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(grace + 10)


def build_service(loaded: Any, model_id: str, base: Any, max_batch: int, api_key: str | None = None,
                  drafting: Any = None, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
                  prefill_chunk: int = DEFAULT_PREFILL_CHUNK, prompt_cache_dir: Path | None = None) -> Service:
    """A `Service` over a loaded model: its scheduler (not started: the app's lifespan starts it), with a
    prefix cache of `prefix_cache_mb` MB (0: none) and chunked prefill of `prefill_chunk` tokens (0: whole).
    `prompt_cache_dir`: the prefix cache is read from there now and written there when the server stops."""
    import time

    from llmgen.decoding.admission import Prefill
    from llmgen.loading.engines.prefix import PrefixCache
    from llmgen.serve.responses import fingerprint
    from llmgen.serve.scheduler import Scheduler

    prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
    prefill = Prefill(prefix, prefill_chunk, loaded.engine) if prefix is not None or prefill_chunk else None
    scheduler = Scheduler(loaded, max_batch, drafting, prefill)
    if prompt_cache_dir is not None and prefix is not None:
        _keep_prefixes(prompt_cache_dir, loaded, prefix, scheduler)
    return Service(loaded, scheduler, model_id, base, max_batch, api_key,
                   fingerprint(loaded.engine.name, loaded.ref, base), int(time.time()))


def _keep_prefixes(directory: Path, loaded: Any, prefix: Any, scheduler: Any) -> None:
    """Fill the prefix cache from `directory` (`--prompt-cache-dir`), and write it back there on stop."""
    import sys

    from llmgen.loading import prompt_cache

    def note(line: str) -> None:
        print(f"llmgen: note: {line}", file=sys.stderr, flush=True)

    for entry in prompt_cache.load_dir(directory, loaded, note):
        prefix.store(entry.tokens, entry.cells)
    if len(prefix):
        note(f"the prefix cache starts with {len(prefix)} entries ({prefix.nbytes / 2**20:.0f} MB) from {directory}")

    def save() -> None:
        try:
            prompt_cache.save_dir(directory, loaded, [(list(key), cells) for key, (_, cells) in prefix.entries.items()])
        except OSError as err:
            note(f"could not write the prefix cache to {directory}: {err}")

    scheduler.on_stop.append(save)
