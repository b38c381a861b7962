"""Throughput and latency of `llmgen serve` against `python -m llama_cpp.server`, on the same GGUF and threads.

Both servers are started here (subprocesses on 127.0.0.1), then driven over HTTP with streamed chat
completions (greedy, the same prompts and max_tokens), at each concurrency in --clients: C clients each
send their share of the requests one after another. For each server and concurrency:

- throughput: generated tokens (content chunks: both servers stream one per token) / wall time;
- time to first token (TTFT): request sent -> first content chunk, p50 and p99;
- inter-token latency: the gaps between content chunks, p50 and p99.

Then llmgen's own targets: 8 requests at once vs the same 8 one after another (wall time ratio), and p50
TTFT at 4 clients vs 1. Runs are interleaved (server A, server B, per concurrency, per round) and the
medians over --rounds are reported. Results as JSON on stdout (and --out FILE).

    python scripts/bench_serve.py --threads 1 --clients 1,4,16 --max-tokens 32 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a haiku about tea.", "What is the capital of France?", "List three primary colors.",
           "Explain recursion in one sentence.", "Give me a name for a cat.", "How do plants make food?",
           "Say hello in Spanish.", "What is 12 times 12?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(proc: subprocess.Popen, url: str, path: str, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_serve: a server exited with {proc.returncode}: {proc.args}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bench_serve: {url} did not come up")


def start_llmgen(gguf: str, threads: int, max_batch: int, log: Path,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "llmgen", "serve", "-m", gguf, "--model-name", "bench",
                             "--port", str(port), "--max-batch", str(max_batch), "--threads", str(threads),
                             *extra], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/health")
    return proc, url, "bench"


def start_llamacpp(gguf: str, threads: int, log: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--n_ctx", "2048", "--port", str(port),
                             "--model_alias", "bench", "--interrupt_requests", "False"],  # queue, not interrupt
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/v1/models")
    return proc, url, "bench"


def one_request(client: httpx.Client, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True}
    sent = time.perf_counter()
    stamps = []
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    return {"ttft": stamps[0] - sent if stamps else None, "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
            "tokens": len(stamps)}


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads share `requests` requests (each sends its share one after another)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for k in range(index, requests, clients):
                result = one_request(client, model, PROMPTS[k % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    gaps = sorted(g for r in results for g in r["gaps"])
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": requests, "wall_s": wall, "tokens": tokens,
            "tokens_per_s": tokens / wall, "ttft_p50_s": _pct(ttfts, 50), "ttft_p99_s": _pct(ttfts, 99),
            "itl_p50_s": _pct(gaps, 50), "itl_p99_s": _pct(gaps, 99)}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def _median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("wall_s", "tokens_per_s", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "tokens"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["rounds"] = len(runs)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="the GGUF file (default: the embedded SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrencies")
    parser.add_argument("--requests", default="4,8,16", help="requests per concurrency (same order as --clients)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--servers", default="llmgen,llamacpp",
                        help="which servers to run: llmgen, llmgen-draft (llmgen serve with --draft-args), llamacpp")
    parser.add_argument("--draft-args", default="--draft small --gamma auto", help="llmgen-draft's extra options")
    parser.add_argument("--skip-targets", action="store_true", help="skip the 8 sequential / 8 concurrent runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.gguf is None:
        sys.path.insert(0, str(ROOT))
        from llmgen.loading.registry import resolve

        args.gguf = str(resolve("smollm2-135m").location)
    clients = [int(c) for c in args.clients.split(",")]
    requests = [int(r) for r in args.requests.split(",")]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers: dict[str, tuple[subprocess.Popen, str, str]] = {}
    try:
        if "llmgen" in args.servers.split(","):
            servers["llmgen"] = start_llmgen(args.gguf, args.threads, max(16, max(clients)), logs / "bench_serve_llmgen.log")
        if "llmgen-draft" in args.servers.split(","):
            servers["llmgen --draft"] = start_llmgen(args.gguf, args.threads, max(16, max(clients)),
                                                     logs / "bench_serve_llmgen_draft.log", tuple(args.draft_args.split()))
        if "llamacpp" in args.servers:
            servers["llama_cpp.server"] = start_llamacpp(args.gguf, args.threads, logs / "bench_serve_llamacpp.log")
        for _, url, model in servers.values():  # warm-up: first requests load and compile
            run_load(url, model, 2, 2, 4)
        runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in clients} for name in servers}
        targets: list[dict] = []
        for _ in range(args.rounds):
            for c, n in zip(clients, requests):
                for name, (_, url, model) in servers.items():
                    result = run_load(url, model, c, n, args.max_tokens)
                    runs[name][c].append(result)
                    print(json.dumps({"server": name, **result}), file=sys.stderr, flush=True)
            if "llmgen" in servers and not args.skip_targets:
                _, url, model = servers["llmgen"]
                sequential = run_load(url, model, 1, 8, args.max_tokens)
                concurrent = run_load(url, model, 8, 8, args.max_tokens)
                targets.append({"sequential_8_wall_s": sequential["wall_s"], "concurrent_8_wall_s": concurrent["wall_s"]})
        report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
                  "cores": os.cpu_count(), "threads": args.threads, "gguf": Path(args.gguf).name,
                  "max_tokens": args.max_tokens,
                  "results": {name: [_median(runs[name][c]) for c in clients] for name in servers}}
        if targets:
            seq = statistics.median(t["sequential_8_wall_s"] for t in targets)
            con = statistics.median(t["concurrent_8_wall_s"] for t in targets)
            mine = {r["clients"]: r for r in report["results"]["llmgen"]}
            report["targets"] = {"concurrent_8_over_sequential_8": con / seq, "sequential_8_wall_s": seq,
                                 "concurrent_8_wall_s": con}
            if 1 in mine and 4 in mine and mine[1]["ttft_p50_s"]:
                report["targets"]["ttft_p50_4_over_1"] = mine[4]["ttft_p50_s"] / mine[1]["ttft_p50_s"]
            other = {r["clients"]: r for r in report["results"].get("llama_cpp.server", [])}
            if 16 in mine and 16 in other:
                report["targets"]["throughput_16_over_llamacpp"] = mine[16]["tokens_per_s"] / other[16]["tokens_per_s"]
        report["health"] = {name: httpx.get(url + "/health", timeout=10).json()  # llmgen's counters
                            for name, (_, url, _) in servers.items() if name.startswith("llmgen")}
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n", encoding="utf-8")
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
