"""Throughput and latency of `llmgen serve` against `python -m llama_cpp.server`, on the same GGUF and threads.

The servers are started here (subprocesses on 127.0.0.1, with this tree on PYTHONPATH), then driven over
HTTP with streamed greedy chat completions. `--servers` names them by label: `llamacpp`, `llmgen`, and
llmgen with extra options: `llmgen-nocache` (`--prefix-cache-mb 0`), `llmgen-nochunk` (`--prefill-chunk 0`),
`llmgen-draft` (`--draft-args`), or any `--label NAME=OPTIONS`. A server that exits before it is ready (an
option it does not have yet) is reported under `not_run` and the others go on. `--workloads`:

- throughput: at each concurrency in --clients, C clients each send their share of the requests one after
  another: tokens (content chunks: both servers stream one per token) / wall time, time to first token
  (TTFT) and inter-token latency, p50 and p99. Then llmgen's own targets: 8 requests at once vs the same 8
  one after another (wall time), p50 TTFT at 4 clients vs 1, and 16 clients against llama_cpp.server;
- chat: a 4-turn conversation after a system prompt of --system-tokens, --chat-tokens a turn; each turn
  sends the whole conversation so far, the replies as returned. TTFT of turn 1, median TTFT of turns 2-4;
- shared: 8 requests at once, each its own question after the same system prompt: wall time;
- arrival: 3 streams of --arrival-tokens; once each has 8 tokens, a prompt of --long-tokens arrives. The
  streams' inter-token p50, and p99 over the gaps between the long prompt's arrival and its first token.

Every long text is new in each round (see scripts/serve_workloads.py), so a prefix cache is only credited
with the reuse the workload offers. Runs are interleaved (server A, B, A, B within each round) and medians
over --rounds are reported, with the ratios against issue 27's targets on stderr. JSON on stdout (and --out).

    python scripts/bench_serve.py --threads 1 --clients 1,4,16 --max-tokens 32 --rounds 2
    python scripts/bench_serve.py --threads 1 --workloads chat,shared --servers llmgen,llmgen-nocache,llamacpp
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_workloads as wl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a haiku about tea.", "What is the capital of France?", "List three primary colors.",
           "Explain recursion in one sentence.", "Give me a name for a cat.", "How do plants make food?",
           "Say hello in Spanish.", "What is 12 times 12?"]
LABELS = {"llmgen": "", "llmgen-nocache": "--prefix-cache-mb 0", "llmgen-nochunk": "--prefill-chunk 0"}
WORKLOADS = ("throughput", "chat", "shared", "arrival")


class ServerExited(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(proc: subprocess.Popen, url: str, path: str, log: Path, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = [line.strip("│ ") for line in log.read_text(errors="replace").splitlines() if line.strip("│ ")]
            raise ServerExited(f"exited with {proc.returncode}: {' '.join(lines[-3:])[-300:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise ServerExited(f"{url} did not come up in {seconds:.0f} s")


def _env(threads: int) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}


def start_llmgen(gguf: str, threads: int, max_batch: int, log: Path,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgen", "serve", "-m", gguf, "--model-name", "bench",
                             "--port", str(port), "--max-batch", str(max_batch), "--threads", str(threads),
                             *extra], cwd=ROOT, env=_env(threads), stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/health", log)
    return proc, url, "bench"


def start_llamacpp(gguf: str, threads: int, n_ctx: int, log: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()  # one slot: it reuses the longest prefix of the previous prompt (its prompt cache)
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--port", str(port),
                             "--model_alias", "bench", "--interrupt_requests", "False"],  # queue, not interrupt
                            cwd=ROOT, env=_env(threads), stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, "/v1/models", log)
    return proc, url, "bench"


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads share `requests` requests (each sends its share one after another)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            for k in range(index, requests, clients):
                messages = [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]
                result = wl.stream_chat(client, model, messages, max_tokens)
                with lock:
                    results.append(result)

    wall = wl.concurrently(client_loop, clients)
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    gaps = sorted(b - a for r in results for a, b in zip(r["stamps"], r["stamps"][1:]))
    tokens = sum(len(r["stamps"]) for r in results)
    return {"clients": clients, "requests": requests, "wall_s": wall, "tokens": tokens,
            "tokens_per_s": tokens / wall, "ttft_p50_s": wl.pct(ttfts, 50), "ttft_p99_s": wl.pct(ttfts, 99),
            "itl_p50_s": wl.pct(gaps, 50), "itl_p99_s": wl.pct(gaps, 99)}


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(x: float | None, unit: str = "×") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def targets(report: dict) -> tuple[dict, list[str]]:
    """Issue 27's ratios for every llmgen label, and a line of text for each."""
    out: dict[str, dict] = {}
    lines: list[str] = []
    peer = "llamacpp"
    for label in report["servers"]:
        if not label.startswith("llmgen"):
            continue
        mine: dict[str, float | None] = {}
        chat, other = report.get("chat", {}).get(label), report.get("chat", {}).get(peer)
        if chat:
            mine["chat_turns2_4_over_turn1"] = _ratio(chat["ttft_turns2_4_s"], chat["ttft_turn1_s"])
            mine["chat_turns2_4_over_llamacpp"] = _ratio(chat["ttft_turns2_4_s"], (other or {}).get("ttft_turns2_4_s"))
            lines.append(f"chat {label}: TTFT turn 1 {_fmt(chat['ttft_turn1_s'], ' s')}, turns 2-4 "
                         f"{_fmt(chat['ttft_turns2_4_s'], ' s')} = {_fmt(mine['chat_turns2_4_over_turn1'])} turn 1 "
                         f"(target ≤ 0.1×), {_fmt(mine['chat_turns2_4_over_llamacpp'])} llama_cpp.server's "
                         f"{_fmt((other or {}).get('ttft_turns2_4_s'), ' s')} (target ≤ 1.5×)")
        shared = report.get("shared", {})
        if label in shared:
            base = shared.get("llmgen-nocache", {}).get("wall_s") if label != "llmgen-nocache" else None
            mine["shared_over_nocache"] = _ratio(shared[label]["wall_s"], base)
            mine["shared_over_llamacpp"] = _ratio(shared[label]["wall_s"], shared.get(peer, {}).get("wall_s"))
            lines.append(f"shared {label}: 8 requests {_fmt(shared[label]['wall_s'], ' s')} = "
                         f"{_fmt(mine['shared_over_nocache'])} llmgen-nocache (target ≤ 0.5×), "
                         f"{_fmt(mine['shared_over_llamacpp'])} llama_cpp.server")
        arrival = report.get("arrival", {}).get(label)
        if arrival:
            mine["arrival_p99_over_p50"] = arrival["p99_arrival_over_p50"]
            lines.append(f"arrival {label}: inter-token p50 {_fmt(arrival['itl_p50_s'], ' s')}, p99 while the long "
                         f"prompt arrives {_fmt(arrival['itl_p99_arrival_s'], ' s')} = "
                         f"{_fmt(arrival['p99_arrival_over_p50'])} (target ≤ 3×); its TTFT "
                         f"{_fmt(arrival['long_ttft_s'], ' s')}")
        rows = {r["clients"]: r for r in report.get("results", {}).get(label, [])}
        peers = {r["clients"]: r for r in report.get("results", {}).get(peer, [])}
        if 16 in rows and 16 in peers:
            mine["throughput_16_over_llamacpp"] = _ratio(rows[16]["tokens_per_s"], peers[16]["tokens_per_s"])
            lines.append(f"throughput {label}: 16 clients {rows[16]['tokens_per_s']:.1f} tok/s = "
                         f"{_fmt(mine['throughput_16_over_llamacpp'])} llama_cpp.server (target ≥ 1.5×)")
        out[label] = mine
    arrival = report.get("arrival", {}).get(peer)
    if arrival:
        lines.append(f"arrival llamacpp (one request at a time): p50 {_fmt(arrival['itl_p50_s'], ' s')}, "
                     f"p99 in the window {_fmt(arrival['itl_p99_arrival_s'], ' s')}, long prompt's TTFT "
                     f"{_fmt(arrival['long_ttft_s'], ' s')}")
    return out, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="the GGUF file (default: the embedded SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, of: " + ", ".join(WORKLOADS))
    parser.add_argument("--clients", default="1,4,16", help="throughput: comma-separated concurrencies")
    parser.add_argument("--requests", default="4,8,16", help="throughput: requests per concurrency (as --clients)")
    parser.add_argument("--max-tokens", type=int, default=32, help="throughput: tokens a request")
    parser.add_argument("--system-tokens", type=int, default=700, help="chat, shared: the system prompt's tokens")
    parser.add_argument("--chat-tokens", type=int, default=24, help="chat, shared: tokens a reply")
    parser.add_argument("--long-tokens", type=int, default=2000, help="arrival: the arriving prompt's tokens")
    parser.add_argument("--arrival-tokens", type=int, default=96, help="arrival: tokens of each running stream")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--servers", default="llmgen,llamacpp",
                        help="labels: llamacpp, llmgen, llmgen-nocache, llmgen-nochunk, llmgen-draft, or --label's")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=OPTIONS",
                        help="a server label for llmgen serve with these options (repeatable)")
    parser.add_argument("--draft-args", default="--draft small --gamma auto", help="llmgen-draft's extra options")
    parser.add_argument("--llamacpp-ctx", type=int, default=4096, help="llama_cpp.server's --n_ctx")
    parser.add_argument("--skip-targets", action="store_true", help="throughput: skip the 8 sequential / 8 concurrent")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.gguf is None:
        sys.path.insert(0, str(ROOT))
        from llmgen.loading.registry import resolve

        args.gguf = str(resolve("smollm2-135m").location)
    workloads = [w for w in args.workloads.split(",") if w]
    if set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads: {', '.join(sorted(set(workloads) - set(WORKLOADS)))}")
    labels = {**LABELS, "llmgen-draft": args.draft_args}
    for item in args.label:
        name, _, options = item.partition("=")
        labels[name] = options
    clients = [int(c) for c in args.clients.split(",")]
    requests = [int(r) for r in args.requests.split(",")]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "load_start": load(), "threads": args.threads,
                    "gguf": Path(args.gguf).name, "workloads": workloads, "servers": {}, "not_run": {}}
    print(f"bench_serve: {report['date']}, {report['cpu']}, {report['cores']} cores, load {report['load_start']}",
          file=sys.stderr, flush=True)
    servers: dict[str, tuple[subprocess.Popen, str, str]] = {}
    try:
        for label in [s for s in args.servers.split(",") if s]:
            log = logs / f"bench_serve_{label}.log"
            try:
                if label == "llamacpp":
                    servers[label] = start_llamacpp(args.gguf, args.threads, args.llamacpp_ctx, log)
                    report["servers"][label] = f"llama_cpp.server --n_ctx {args.llamacpp_ctx}"
                elif label in labels:
                    extra = tuple(labels[label].split())
                    servers[label] = start_llmgen(args.gguf, args.threads, max(16, max(clients)), log, extra)
                    report["servers"][label] = " ".join(("llmgen serve", *extra))
                else:
                    parser.error(f"unknown server label {label!r} (--label NAME=OPTIONS defines one)")
            except ServerExited as err:
                report["not_run"][label] = str(err)
                print(f"bench_serve: {label} not run: {err}", file=sys.stderr, flush=True)
        for _, url, model in servers.values():  # warm-up: first requests load, compile, grow the KV cache
            run_load(url, model, 2, 2, 4)
            if set(workloads) - {"throughput"}:
                with httpx.Client(base_url=url, timeout=600) as client:
                    text = wl.long_document("warm-up", max(args.long_tokens, args.system_tokens + 300))
                    wl.stream_chat(client, model, [{"role": "user", "content": text}], 2)
        runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in clients} for name in servers}
        other: dict[str, dict[str, list[dict]]] = {w: {name: [] for name in servers} for w in workloads}
        own: list[dict] = []
        for r in range(args.rounds):
            for workload in workloads:
                if workload == "throughput":
                    for c, n in zip(clients, requests):
                        for name, (_, url, model) in servers.items():
                            result = run_load(url, model, c, n, args.max_tokens)
                            runs[name][c].append(result)
                            print(json.dumps({"server": name, **result}), file=sys.stderr, flush=True)
                    if "llmgen" in servers and not args.skip_targets:
                        _, url, model = servers["llmgen"]
                        sequential = run_load(url, model, 1, 8, args.max_tokens)
                        concurrent = run_load(url, model, 8, 8, args.max_tokens)
                        own.append({"sequential_8_wall_s": sequential["wall_s"],
                                    "concurrent_8_wall_s": concurrent["wall_s"]})
                    continue
                for name, (_, url, model) in servers.items():
                    tag = f"{workload}-{r}"
                    if workload == "chat":
                        result = wl.chat(url, model, tag, args.system_tokens, args.chat_tokens)
                    elif workload == "shared":
                        result = wl.shared(url, model, tag, args.system_tokens, args.chat_tokens)
                    else:
                        result = wl.arrival(url, model, tag, args.long_tokens, args.arrival_tokens)
                    other[workload][name].append(result)
                    print(json.dumps({"workload": workload, "round": r, "server": name, **result}),
                          file=sys.stderr, flush=True)
        if "throughput" in workloads:
            report["max_tokens"] = args.max_tokens
            report["results"] = {name: [wl.median_of(runs[name][c]) for c in clients] for name in servers}
            for rows in report["results"].values():
                for row in rows:
                    row.pop("per_round")
        for workload in workloads:
            if workload != "throughput":
                report[workload] = {name: wl.median_of(results) for name, results in other[workload].items()}
        if own:
            seq = statistics.median(t["sequential_8_wall_s"] for t in own)
            con = statistics.median(t["concurrent_8_wall_s"] for t in own)
            mine = {r["clients"]: r for r in report["results"]["llmgen"]}
            report["targets"] = {"concurrent_8_over_sequential_8": con / seq, "sequential_8_wall_s": seq,
                                 "concurrent_8_wall_s": con}
            if 1 in mine and 4 in mine and mine[1]["ttft_p50_s"]:
                report["targets"]["ttft_p50_4_over_1"] = mine[4]["ttft_p50_s"] / mine[1]["ttft_p50_s"]
        report["issue27"], report["summary"] = targets(report)
        report["load_end"] = load()
        report["health"] = {name: httpx.get(url + "/health", timeout=10).json()  # llmgen's counters
                            for name, (_, url, _) in servers.items() if name.startswith("llmgen")}
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n", encoding="utf-8")
        print("\n".join([f"bench_serve: {report['date']}, {report['cpu']}, load {report['load_start']} -> "
                         f"{report['load_end']}", *report["summary"],
                         *(f"{k}: not run ({v})" for k, v in report["not_run"].items())]), file=sys.stderr)
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
