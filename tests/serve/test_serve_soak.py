"""A bounded soak of `llmgen serve`: concurrent clients sending mixed requests (streamed chat, completions
with logprobs, a JSON schema, stop strings, streams dropped half-way) for a while. Afterwards every request
that was not dropped completed, no row is left in the batch, and the process's RSS stayed flat after warm-up.

Short by default (8 clients, 12 s); LLMGEN_SOAK_SECONDS and LLMGEN_SOAK_CLIENTS make it the issue's full
soak (32 clients, 60 s): `LLMGEN_SOAK_SECONDS=60 LLMGEN_SOAK_CLIENTS=32 pytest tests/serve/test_serve_soak.py`.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter

import psutil
import pytest
from serving import MODEL_ID, need_server, start

need_server()
httpx = pytest.importorskip("httpx")

SECONDS = float(os.environ.get("LLMGEN_SOAK_SECONDS", "12"))
CLIENTS = int(os.environ.get("LLMGEN_SOAK_CLIENTS", "8"))
RSS_GROWTH_LIMIT = 64 * 2**20  # bytes, after warm-up
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
KINDS = ("stream", "logprobs", "schema", "stop", "drop")


def one_request(client: httpx.Client, kind: str, rng: random.Random) -> str:
    """Send one request of `kind`; return "ok" or "dropped", raise on anything unexpected."""
    chat = {"model": MODEL_ID, "messages": [{"role": "user", "content": rng.choice(["Hi", "Tell me", "Why?"])}],
            "max_tokens": rng.randint(4, 24), "seed": rng.randint(0, 99)}
    if kind in ("stream", "drop"):
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True, "max_tokens": 40,
                                                                 "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            if kind == "drop":
                for _ in range(rng.randint(1, 4)):
                    next(lines)
                return "dropped"
            data = [line for line in lines if line.startswith("data: ")]
            assert data[-1] == "data: [DONE]", data[-3:]
            assert json.loads(data[-2][6:])["usage"]["completion_tokens"] >= 1
            return "ok"
    if kind == "logprobs":
        r = client.post("/v1/completions", json={"model": MODEL_ID, "prompt": "The sky is", "logprobs": 2,
                                                 "max_tokens": rng.randint(2, 16), "temperature": 0})
        body = r.json()
        assert r.status_code == 200, body
        assert len(body["choices"][0]["logprobs"]["tokens"]) == body["usage"]["completion_tokens"]
        return "ok"
    if kind == "schema":
        r = client.post("/v1/chat/completions", json={**chat, "max_tokens": 30, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}})
        body = r.json()
        assert r.status_code == 200, body
        if body["choices"][0]["finish_reason"] == "stop":
            assert set(json.loads(body["choices"][0]["message"]["content"])) == {"ok"}
        return "ok"
    r = client.post("/v1/chat/completions", json={**chat, "stop": [" ", "e"]})
    body = r.json()
    assert r.status_code == 200, body
    content = body["choices"][0]["message"]["content"]
    assert " " not in content and "e" not in content
    return "ok"


def test_soak_mixed_clients(wide_lm) -> None:
    pytest.importorskip("llguidance")
    service, context = start(wide_lm, max_batch=max(16, CLIENTS))
    process = psutil.Process()
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    lock = threading.Lock()
    with context as url:
        begin = time.monotonic()
        deadline = begin + SECONDS

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=url, timeout=120) as client:
                while time.monotonic() < deadline:
                    kind = rng.choice(KINDS)
                    try:
                        outcome = one_request(client, kind, rng)
                    except Exception as err:  # noqa: BLE001 - every failure is a finding
                        outcome = "error"
                        with lock:
                            errors.append(f"{kind}: {type(err).__name__}: {err}"[:300])
                    with lock:
                        outcomes[outcome] += 1

        def sample_rss() -> None:
            while time.monotonic() < deadline:
                rss.append((time.monotonic() - begin, process.memory_info().rss))
                time.sleep(0.25)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=sample_rss))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SECONDS + 180)
        scheduler = service.scheduler
        settle = time.monotonic() + 20
        while (scheduler.rows or scheduler.cache_rows or scheduler.waiting) and time.monotonic() < settle:
            time.sleep(0.05)
        counters = scheduler.counters
        report = {"outcomes": dict(outcomes), "counters": counters.__dict__, "rss_mib": [
            (round(t, 1), round(b / 2**20, 1)) for t, b in rss[::max(1, len(rss) // 12)]]}
        print(json.dumps(report))
        assert not errors, errors[:5]
        assert outcomes["ok"] > 0 and outcomes["dropped"] > 0
        assert (scheduler.rows, scheduler.cache_rows, scheduler.waiting) == (0, 0, 0)
        assert counters.failed == 0
        assert counters.admitted == counters.finished + counters.cancelled
        warm = [b for t, b in rss if t >= SECONDS / 3]
        assert warm and max(warm) - warm[0] < RSS_GROWTH_LIMIT, report["rss_mib"]

