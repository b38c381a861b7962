"""`llmgen serve` answers a request the same way alone and beside 15 others, on the llama.cpp engine and the
real files (greedy, and seeded at temperature 0.8), checked with `llmgen audit --determinism`; and the audit
itself finds a server whose answers depend on the load (a fake one that answers otherwise when it is busy).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import run
from serving import MODEL_ID, need_server, start

from llmgen.decoding.config import DecodingConfig
from llmgen.evaluate import determinism
from llmgen.evaluate.determinism import Answer, first_difference

pytest.importorskip("llama_cpp")


def test_first_difference_counts_tokens_or_characters() -> None:
    assert first_difference(Answer("ab", ["a", "b"]), Answer("ab", ["a", "b"])) is None
    assert first_difference(Answer("abc", ["a", "b", "c"]), Answer("abd", ["a", "b", "d"])) == (2, "token")
    assert first_difference(Answer("abc", None), Answer("ab", None)) == (2, "character")


class Busy(BaseHTTPRequestHandler):
    """A completions endpoint that answers "alone" when no other request was in flight while it was served,
    else "busy"."""

    in_flight = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        with Busy.lock:
            Busy.in_flight += 1
            busy = Busy.in_flight > 1
        time.sleep(0.3)
        with Busy.lock:
            busy = busy or Busy.in_flight > 1
        self.rfile.read(int(self.headers["Content-Length"]))
        text = " busy" if busy else " alone"
        body = json.dumps({"choices": [{"text": text, "logprobs": {"tokens": [text]}, "finish_reason": "length"}]})
        with Busy.lock:
            Busy.in_flight -= 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_the_audit_finds_a_server_that_answers_otherwise_under_load(capsys) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        code, out, err = run(capsys, "audit", "--determinism", url, "-n", "4", "--quiet")
        assert code == 1 and "not deterministic" in out
        report = determinism.audit(url + "/v1/completions", prompts=determinism.PROMPTS[:2], concurrency=4,
                                   max_tokens=4)
        assert report.compared == 4 and len(report.differences) == 4
        assert report.differences[0].at == 0 and report.differences[0].unit == "token"
    finally:
        server.shutdown()


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def served(request):
    need_server()
    from tiny_gguf import gemma_path

    from llmgen.loading import llamacpp, models

    ok, why = llamacpp.batch_invariance()
    if not ok:
        pytest.skip(f"this llama.cpp build is not batch-invariant: {why}")
    ref = str(gemma_path()) if request.param == "gemma" else models.DEFAULT_MODEL
    loaded = models.load(ref, engine="llamacpp", threads=2)
    service, context = start(loaded, DecodingConfig(), max_batch=16)
    with context as url:
        yield url


def test_sixteen_concurrent_requests_equal_each_request_alone(served, capsys) -> None:
    report = determinism.audit(served + "/v1/completions", MODEL_ID, concurrency=16, max_tokens=24)
    assert report.compared == 2 * len(determinism.PROMPTS)
    assert report.ok, [(d.mode, d.prompt, d.at, d.alone, d.batched) for d in report.differences]
    code, out, err = run(capsys, "audit", "--determinism", served, "--served-model", MODEL_ID, "-n", "16", "--quiet",
                         "--json")
    assert code == 0 and json.loads(out)["differ"] == 0
