"""The HTTP side: Starlette routes that translate OpenAI requests into rows and events into responses.

Nothing here decodes (echo's prompt logprobs are one forward, run on the worker thread). A request
is checked (`protocol.py`), its prompt encoded and its constraint compiled (in a worker thread of the
event loop, so a slow grammar does not hold other requests), its rows submitted to the `Scheduler`,
and its events turned into one response or a stream of server-sent events (`responses.py`). A client
that goes away cancels its rows: streamed, when Starlette sees the disconnect and cancels the stream;
not streamed, when the watcher of `whole` sees it.

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
POST /v1/completions, POST /tokenize, POST /detokenize (`tokens.py`). With an API key, every route
but /health needs `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmgen.decoding import constraints
from llmgen.decoding.batch import Row, row_generator
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import to_json, token_logprobs
from llmgen.decoding.sequence import SequenceResult, check_prompt
from llmgen.errors import LlmgenError
from llmgen.loading.models import batch_invariance
from llmgen.serve import fields, protocol, responses, tokens
from llmgen.serve.protocol import APIError
from llmgen.serve.scheduler import Job, Scheduler, next_key

MAX_BODY_BYTES = 8 * 1024 * 1024
SHUTDOWN = "cancelled: the server is shutting down"


@dataclass
class Service:
    """What the routes need: the model, the scheduler, and the server's own settings."""

    loaded: Any  # LoadedModel
    scheduler: Scheduler
    model_id: str
    base: DecodingConfig  # defaults < --preset
    max_batch: int
    api_key: str | None = None
    fingerprint: str = ""
    created: int = 0


def create_app(service: Service) -> Starlette:
    """The ASGI application; its lifespan starts the scheduler and stops it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not service.scheduler.alive:
            service.scheduler.start()
        yield
        await run_in_threadpool(service.scheduler.stop)

    routes = [Route("/health", partial(_health, service)),
              Route("/v1/models", partial(_models, service)),
              Route("/v1/models/{model_id:path}", partial(_model, service)),
              Route("/v1/chat/completions", partial(_generate, service, kind="chat"), methods=["POST"]),
              Route("/v1/completions", partial(_generate, service, kind="completion"), methods=["POST"]),
              Route("/tokenize", partial(_tokens, service, tokens.tokenize), methods=["POST"]),
              Route("/detokenize", partial(_tokens, service, tokens.detokenize), methods=["POST"])]
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _server_error}
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)


async def _api_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, APIError)
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _http_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    kind = "not_found" if err.status_code == 404 else None
    return await _api_error(request, APIError(f"{request.method} {request.url.path}: {err.detail}",
                                              status=err.status_code, code=kind))


async def _server_error(request: Request, err: Exception) -> Response:
    return await _api_error(request, APIError(f"internal error: {type(err).__name__}: {err}", status=500,
                                              type="server_error"))


def _authorize(service: Service, request: Request) -> None:
    if service.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), service.api_key.encode()):
        raise APIError("a valid API key is needed: Authorization: Bearer <key>" if header else
                       "no API key: send Authorization: Bearer <key>", status=401, code="invalid_api_key")


async def _health(service: Service, request: Request) -> Response:
    scheduler = service.scheduler
    counters = scheduler.counters
    return JSONResponse({"status": "ok" if scheduler.alive else "stopped", "model": service.model_id,
                         "rows": scheduler.rows, "waiting": scheduler.waiting, "cache_rows": scheduler.cache_rows,
                         "admitted": counters.admitted, "finished": counters.finished,
                         "cancelled": counters.cancelled, "cancelled_waiting": counters.cancelled_waiting,
                         "failed": counters.failed,
                         "speculative": counters.speculative, "joined": counters.joined,
                         "max_rows": counters.max_rows, "prefix_cache": scheduler.prefix_stats()})


def _model_card(service: Service) -> dict[str, Any]:
    invariant, why = batch_invariance(service.loaded.engine.name)
    return {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "llmgen",
            "max_model_len": service.loaded.context_length, "engine": service.loaded.engine.name,
            "batch_invariant": invariant, "batch_invariance": why}


async def _models(service: Service, request: Request) -> Response:
    _authorize(service, request)
    return JSONResponse({"object": "list", "data": [_model_card(service)]})


async def _model(service: Service, request: Request) -> Response:
    _authorize(service, request)
    _check_model(service, request.path_params["model_id"])
    return JSONResponse(_model_card(service))


def _check_model(service: Service, model: str) -> None:
    if model != service.model_id:
        raise APIError(f"the model {model!r} does not exist here; this server serves {service.model_id!r}",
                       status=404, param="model", code="model_not_found")


async def _body(service: Service, request: Request) -> dict[str, Any]:
    _authorize(service, request)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise APIError(f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB", status=413)
    return protocol.parse_body(raw)


async def _tokens(service: Service, answer: Any, request: Request) -> Response:
    """/tokenize and /detokenize: `answer(loaded, base, body)` in a worker thread of the event loop."""
    body = await _body(service, request)
    if body.get("model") is not None:
        _check_model(service, body["model"])
    return JSONResponse(await run_in_threadpool(answer, service.loaded, service.base, body))


async def _generate(service: Service, request: Request, *, kind: str) -> Response:
    body = await _body(service, request)
    parse = protocol.chat_request if kind == "chat" else protocol.completion_request
    req = parse(body, service.base, service.max_batch)
    _check_model(service, req.model)
    prompts = await run_in_threadpool(_encode, service, req)
    echoed = None
    if req.echo:  # the prompts' own logprobs, from one forward each on the worker thread
        texts = [p if isinstance(p, str) else None for p in req.prompts]
        echoed = [await asyncio.wrap_future(service.scheduler.call(partial(_prompt_logprobs, service, ids, text, req)))
                  for ids, text in zip(prompts, texts)]
    if req.score_only:
        assert echoed is not None  # score_only is echo with max_tokens 0
        return JSONResponse(_Answer.scored(service, req, echoed, [len(ids) for ids in prompts]))
    constraint = await run_in_threadpool(_constraint, service, req.config)
    tables = await run_in_threadpool(fields.check_for_model, req.config, service.loaded)
    rows = [Row(next_key(), list(ids), req.config, row_generator(req.config.seed, j, service.loaded.device),
                logprobs=req.logprobs, matcher=None if constraint is None else constraint.matcher(), tables=tables,
                reuse=req.cache_prompt)
            for ids in prompts for j in range(req.config.n)]
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def emit(event: tuple[Any, ...]) -> None:  # from the worker thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone
            pass

    job = Job(rows, emit)
    answer = _Answer(service, req, job, events, [len(ids) for ids in prompts], echoed)
    service.scheduler.submit(job)
    if req.stream:
        return StreamingResponse(answer.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await answer.whole(request))


def _encode(service: Service, req: protocol.Request) -> list[list[int]]:
    """Prompt ids: the chat template over the messages (with the settings' chat_template_kwargs), or
    each completion prompt as `tokenizer(text)` (what `llmgen generate --raw` reads), as `tokens.py`
    encodes them for /tokenize. Checked against the context."""
    loaded = service.loaded
    if req.kind == "chat":
        encoded = [tokens.chat_ids(loaded, req.messages, req.config)]
    else:
        encoded = []
        for prompt in req.prompts:
            if isinstance(prompt, str):
                encoded.append(tokens.text_ids(loaded, prompt, "prompt"))
            else:
                size = fields.vocabulary(loaded)
                if max(prompt) >= size:
                    raise APIError(f"prompt token {max(prompt)} is outside the vocabulary ({size})", param="prompt")
                encoded.append(prompt)
    param = "messages" if req.kind == "chat" else "prompt"
    for ids in encoded:
        try:
            check_prompt(ids, loaded.context_length)
        except LlmgenError as err:
            code = "context_length_exceeded" if ids else None
            raise APIError(str(err), param=param, code=code) from None
    return encoded


def _prompt_logprobs(service: Service, ids: list[int], text: str | None, req: protocol.Request) -> dict[str, Any]:
    """echo: the prompt's text (as given, or decoded from its ids) and, with logprobs, each prompt token's
    logprob given the tokens before it (the first has none), in the completions shape. Runs on the
    worker thread: the one forward the HTTP side asks for."""
    tokenizer = service.loaded.tokenizer
    text = tokenizer.decode(ids) if text is None else text
    if req.logprobs is None:
        return {"text": text, "logprobs": None}
    entries: list[dict[str, Any]] = []
    if len(ids) > 1:
        logits = service.loaded.engine.sequence().forward(ids, all_logits=True)[:-1]  # [len - 1, vocab]
        entries = to_json(token_logprobs(logits, None, ids[1:], req.logprobs), tokenizer)
    first = tokenizer.decode(ids[:1])
    rest = responses.completion_logprobs(entries, len(first))
    assert rest is not None  # entries is a list
    return {"text": text, "logprobs": {"tokens": [first, *rest["tokens"]],
                                       "token_logprobs": [None, *rest["token_logprobs"]],
                                       "top_logprobs": [None, *rest["top_logprobs"]],
                                       "text_offset": [0, *rest["text_offset"]]}}


def _constraint(service: Service, config: DecodingConfig) -> Any:
    try:
        return constraints.for_model(config, service.loaded)
    except LlmgenError as err:
        param = "regex" if config.regex else "choice" if config.choice else "response_format"
        raise APIError(str(err).replace("--json-object", "response_format json_object")
                       .replace("--schema", "response_format json_schema"), param=param) from None


def _echo(choice: dict[str, Any], echoed: dict[str, Any]) -> None:
    """Put the prompt's text and logprobs before a choice's own."""
    shift = len(echoed["text"])
    choice["text"] = echoed["text"] + choice["text"]
    own, mine = choice["logprobs"], echoed["logprobs"]
    if own is not None and mine is not None:
        choice["logprobs"] = {key: mine[key] + (own[key] if key != "text_offset" else [o + shift for o in own[key]])
                              for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


class _Answer:
    """One request's events turned into OpenAI's answer: one object, or a stream of chunks."""

    def __init__(self, service: Service, req: protocol.Request, job: Job | None, events: asyncio.Queue | None,
                 prompt_lengths: list[int], echoed: list[dict[str, Any]] | None = None) -> None:
        self.service, self.req, self.job, self.events = service, req, job, events
        self.prompt_lengths, self.echoed = prompt_lengths, echoed
        self.ident = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.results: list[SequenceResult | None] = [None] * (len(job.rows) if job else 0)

    @property
    def finished(self) -> bool:
        return all(r is not None for r in self.results)

    def _running(self) -> tuple[Job, asyncio.Queue]:
        """The job and its events; a `scored` answer has neither and is never awaited."""
        assert self.job is not None and self.events is not None
        return self.job, self.events

    def _done(self) -> list[SequenceResult]:
        done = [r for r in self.results if r is not None]
        assert len(done) == len(self.results)  # called once every row has finished
        return done

    async def whole(self, request: Request) -> dict[str, Any]:
        job, events = self._running()

        async def watch() -> None:  # as Starlette's streaming responses do: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancel()

        watcher = asyncio.create_task(watch())
        try:
            while not self.finished:
                self._take(await events.get())
        finally:
            watcher.cancel()
            if not self.finished:
                job.cancel()
        build = responses.chat_response if self.req.kind == "chat" else responses.completion_response
        answer = build(self.ident, self.created, self.service.model_id, self.service.fingerprint, self._done(),
                       self.prompt_lengths, self.req.logprobs is not None)
        if self.echoed is not None:
            for choice in answer["choices"]:
                _echo(choice, self.echoed[choice["index"] // self.req.config.n])
        return answer

    @classmethod
    def scored(cls, service: Service, req: protocol.Request, echoed: list[dict[str, Any]],
               prompt_lengths: list[int]) -> dict[str, Any]:
        """echo with max_tokens 0: one choice per prompt, its text and logprobs, nothing generated."""
        answer = cls(service, req, None, None, prompt_lengths)
        choices = [{"index": i, "text": e["text"], "logprobs": e["logprobs"], "finish_reason": "length"}
                   for i, e in enumerate(echoed)]
        return {"id": answer.ident, "object": "text_completion", "created": answer.created, "model": service.model_id,
                "system_fingerprint": service.fingerprint, "choices": choices,
                "usage": responses.usage(prompt_lengths, [])}

    def _take(self, event: tuple[Any, ...]) -> None:
        if event[0] == "error":
            raise APIError(event[1], status=503 if "shutting down" in event[1] else 500, type="server_error")
        if event[0] == "done":
            if event[2].finish_reason == "cancelled":
                raise APIError(SHUTDOWN, status=503, type="server_error")
            self.results[event[1]] = event[2]

    async def stream(self) -> AsyncIterator[bytes]:
        """Server-sent events: a first chunk per choice (chat: the role), one per piece of text, one with
        the finish reason; with include_usage a last chunk with the usage; then `data: [DONE]`."""
        req, s = self.req, self.service
        job, events = self._running()
        chat = req.kind == "chat"
        head = (self.ident, self.created, s.model_id, s.fingerprint)
        offsets = [0] * len(self.results)

        def chunk(index: int, text: str | None, entries: Any, finish: str | None = None) -> bytes:
            with_lp = req.logprobs is not None and entries
            if chat:
                delta = {} if text is None else {"content": text}
                lp = responses.chat_logprobs(entries) if with_lp else None
                return responses.sse(responses.chat_chunk(*head, index, delta, lp, finish, req.include_usage))
            lp = responses.completion_logprobs(entries, offsets[index]) if with_lp else None
            offsets[index] += len(text or "")
            return responses.sse(responses.completion_chunk(*head, index, text or "", lp, finish, req.include_usage))

        try:
            if chat:
                for index in range(len(self.results)):
                    yield responses.sse(responses.chat_chunk(*head, index, {"role": "assistant", "content": ""},
                                                             None, None, req.include_usage))
            while not self.finished:
                event = await events.get()
                if event[0] == "error":
                    yield responses.sse(APIError(event[1], status=500, type="server_error").body())
                    return
                if event[0] == "text":
                    yield chunk(event[1], event[2], event[3])
                elif event[0] == "done":
                    result = event[2]
                    if result.finish_reason == "cancelled":  # by the server: its grace period ran out
                        yield responses.sse(APIError(SHUTDOWN, status=503, type="server_error").body())
                        return
                    self.results[event[1]] = result
                    if event[3]:  # logprobs of tokens that added no text (an end-of-sequence token)
                        yield chunk(event[1], "", event[3])
                    yield chunk(event[1], None, None, responses.finish_reason(result))
            if req.include_usage:
                yield responses.sse(responses.usage_chunk(*head, req.kind,
                                                          responses.usage(self.prompt_lengths, self._done())))
            yield responses.sse("[DONE]")
        finally:
            if not self.finished:  # the client went away (Starlette cancelled the stream), or shutdown
                job.cancel()
