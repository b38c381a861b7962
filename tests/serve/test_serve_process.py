"""`llmgen serve` as a process: it binds 127.0.0.1 unless told otherwise, and SIGTERM or SIGINT stop it
gracefully: no new connections, requests in flight finish within --grace or are cancelled, exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from serving import need_server, sse_events

need_server()
httpx = pytest.importorskip("httpx")


ROOT = Path(__file__).resolve().parents[2]


def launch(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    from llmgen.serve.server import free_port

    port = free_port()
    # NOTE: one thread, as the tests use: two OpenMP threads on a shared 2-core machine stall each forward.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmgen", "serve", "-m", str(model), "--model-name", "tiny",
                             "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_short_requests_cancels_long_ones_and_exits_0(long_char_model, sig) -> None:
    grace = 3.0
    proc, url = launch(long_char_model, "--grace", str(grace))
    results: dict[str, object] = {}
    # no --host: the server listens on the loopback interface only
    listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening

    def short() -> None:  # finishes well within the grace period
        try:
            r = httpx.post(url + "/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": "abc", "max_tokens": 20, "ignore_eos": True, "temperature": 0})
            results["short"] = (r.status_code, r.json().get("usage", r.json()).get("completion_tokens"))
        except httpx.HTTPError as err:
            results["short"] = repr(err)

    def long() -> None:  # would run for minutes
        try:
            with httpx.stream("POST", url + "/v1/completions", timeout=60, json={
                    "model": "tiny", "prompt": "abc", "max_tokens": 16000, "ignore_eos": True, "stream": True}) as r:
                results["long"] = sse_events(r)
        except httpx.HTTPError as err:
            results["long"] = err

    try:
        threads = [threading.Thread(target=long)]
        threads[0].start()
        time.sleep(0.5)  # the long stream is decoding
        threads.append(threading.Thread(target=short))
        threads[1].start()
        while httpx.get(url + "/health", timeout=10).json()["admitted"] < 2:  # both are decoding
            time.sleep(0.01)
        started = time.monotonic()
        proc.send_signal(sig)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections
            httpx.get(url + "/health", timeout=2)
        proc.wait(grace + 30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    for thread in threads:
        thread.join(30)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert results["short"] == (200, 20)
    long_events = results["long"]  # cut at the end of the grace period, with OpenAI's error object
    assert isinstance(long_events, list) and "[DONE]" not in long_events
    assert "shutting down" in long_events[-1]["error"]["message"]
    assert took < grace + 20
