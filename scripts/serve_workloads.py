"""The workloads of scripts/bench_serve.py beyond plain throughput (issue 27): a multi-turn chat, concurrent
requests that share a system prompt, and a long prompt arriving among running streams.

Each takes a server's base URL, its model id and a `tag` that starts every long text it sends: the tag is
different in every round, so that a prefix cache (or llama.cpp's prompt reuse) never carries a system prompt
over from an earlier round; within a run, the reuse measured is the reuse the workload itself offers.
The texts are deterministic (fixed sentences, numbered), sized in tokens of SmolLM2's BPE (3.5 to 4 characters
a token; the servers' `usage`, where they report it, gives the exact counts).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable

import httpx

# SmolLM2's tokenizer: the rules are 4.0 characters a token, the logbook (with its digits) 3.5
RULE_CHARS_PER_TOKEN, LOG_CHARS_PER_TOKEN = 4.0, 3.5
TOPICS = ["refunds", "shipping", "passwords", "invoices", "warranties", "gift cards", "returns", "account deletion",
          "delivery delays", "discount codes", "subscriptions", "damaged items"]
ACTIONS = ["ask for the order number first", "apologise once and then give the facts",
           "quote the policy section by its number", "offer to escalate to a human agent",
           "keep the answer under three sentences", "never promise a date you cannot check",
           "confirm the customer's email address", "point to the matching help-centre article"]
PLACES = ["the harbour", "the old mill", "the north gate", "the market square", "the river bank", "the library",
          "the station", "the hill farm", "the east bridge"]
CHAT_TURNS = ["A customer asks for a refund on a damaged kettle. What do you say?",
              "They reply that the order number is 4471. What next?",
              "Now they ask whether shipping is refunded too.",
              "Finally, summarize the conversation in one sentence."]
SHARED_QUESTIONS = ["How do I reset my password?", "Where is my parcel?", "Can I return shoes after 40 days?",
                    "My gift card does not work.", "Please delete my account.", "Is my kettle under warranty?",
                    "Why was I charged twice?", "Can I change my delivery address?"]
STREAM_PROMPTS = ["Count from 1 to 300, separated by commas.", "List the even numbers from 2 to 600, one per line.",
                  "Write the multiples of 7 from 7 to 2100, separated by spaces."]


def system_prompt(tag: str, tokens: int) -> str:
    """A support assistant's numbered rules, about `tokens` tokens long, starting with `tag`."""
    lines = [f"[{tag}] You are the support assistant of a small online store. Follow the numbered rules below."]
    i = 0
    while sum(map(len, lines)) < tokens * RULE_CHARS_PER_TOKEN:
        i += 1
        lines.append(f"Rule {i}: when a customer writes about {TOPICS[i % 12]}, {ACTIONS[(i * 5) % 8]}; "
                     f"policy {100 + 7 * i} also covers {TOPICS[(i * 7 + 3) % 12]}.")
    return "\n".join(lines)


def long_document(tag: str, tokens: int) -> str:
    """A town's logbook, about `tokens` tokens long, starting with `tag`, and a question about it."""
    lines = [f"[{tag}] The logbook of the town below, one entry a day."]
    i = 0
    while sum(map(len, lines)) < tokens * LOG_CHARS_PER_TOKEN:
        i += 1
        lines.append(f"Day {i}: {17 * i % 97} visitors came to {PLACES[i % 9]}, the weather was "
                     f"{['dry', 'wet', 'windy', 'cold'][i % 4]}, and {PLACES[(i * 4) % 9]} was closed.")
    return "\n".join(lines) + "\nOn which day did the most visitors come? Answer in one sentence."


def stream_chat(client: httpx.Client, model: str, messages: list[dict], max_tokens: int,
                min_tokens: int = 0, on_token=None) -> dict:
    """One streamed greedy chat completion: the time of each content chunk (one per token in both servers)."""
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # llama_cpp.server ignores the field
    if min_tokens:
        body["min_tokens"] = min_tokens
    sent = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    usage = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            piece = chunk["choices"][0].get("delta", {}).get("content") if chunk.get("choices") else None
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
                if on_token:
                    on_token(len(stamps))
    return {"sent": sent, "stamps": stamps, "text": "".join(text), "ttft": stamps[0] - sent if stamps else None,
            "prompt_tokens": (usage or {}).get("prompt_tokens")}


def chat(url: str, model: str, tag: str, system_tokens: int, max_tokens: int) -> dict:
    """A 4-turn conversation; each turn sends the whole conversation so far, the replies as returned."""
    messages = [{"role": "system", "content": system_prompt(tag, system_tokens)}]
    turns = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for question in CHAT_TURNS:
            messages.append({"role": "user", "content": question})
            turn = stream_chat(client, model, messages, max_tokens)
            messages.append({"role": "assistant", "content": turn["text"]})
            turns.append(turn)
    ttfts = [t["ttft"] for t in turns]
    later = [t for t in ttfts[1:] if t is not None]
    return {"ttft_turns_s": ttfts, "ttft_turn1_s": ttfts[0], "ttft_turns2_4_s": statistics.median(later) if later else None,
            "prompt_tokens": [t["prompt_tokens"] for t in turns], "tokens": [len(t["stamps"]) for t in turns]}


def concurrently(target: Callable[[int], None], count: int) -> float:
    """Run target(0) .. target(count - 1) on threads at once; the wall time until all have returned."""
    started = time.perf_counter()
    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def shared(url: str, model: str, tag: str, system_tokens: int, max_tokens: int, requests: int = 8) -> dict:
    """`requests` requests sent at once, each its own question after the same system prompt: wall time."""
    system = {"role": "system", "content": system_prompt(tag, system_tokens)}
    results: list[dict] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            messages = [system, {"role": "user", "content": SHARED_QUESTIONS[k % len(SHARED_QUESTIONS)]}]
            result = stream_chat(client, model, messages, max_tokens)
        with lock:
            results.append(result)

    wall = concurrently(one, requests)
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    return {"requests": requests, "wall_s": wall, "ttft_p50_s": pct(ttfts, 50), "ttft_max_s": max(ttfts, default=None),
            "tokens": sum(len(r["stamps"]) for r in results), "prompt_tokens": results[0]["prompt_tokens"]}


def arrival(url: str, model: str, tag: str, long_tokens: int, stream_tokens: int, streams: int = 3,
            after: int = 8) -> dict:
    """`streams` streams of exactly `stream_tokens` tokens; once each has `after` tokens (or has ended), a
    prompt of about `long_tokens` tokens arrives. The streams' inter-token gaps: p50 over all of them, and
    p99 (about the largest) over the gaps that overlap the window from the long prompt's arrival to its
    first token, the prefill the streams may wait for."""
    counts = [0] * streams
    done = [threading.Event() for _ in range(streams)]
    results: list[dict | None] = [None] * streams

    def one(k: int) -> None:
        def seen(n: int) -> None:
            counts[k] = n
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                messages = [{"role": "user", "content": STREAM_PROMPTS[k % len(STREAM_PROMPTS)]}]
                results[k] = stream_chat(client, model, messages, stream_tokens, stream_tokens, seen)
        finally:
            done[k].set()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(streams)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not all(c >= after or d.is_set() for c, d in zip(counts, done)):
        time.sleep(0.005)
    running = sum(not d.is_set() for d in done)
    with httpx.Client(base_url=url, timeout=600) as client:
        messages = [{"role": "user", "content": long_document(tag, long_tokens)}]
        long = stream_chat(client, model, messages, 8)
    for thread in threads:
        thread.join()
    start = long["sent"]
    end = long["stamps"][0] if long["stamps"] else time.perf_counter()
    gaps, window = [], []
    for result in results:
        stamps = result["stamps"] if result else []
        for a, b in zip(stamps, stamps[1:]):
            gaps.append(b - a)
            if b > start and a < end:
                window.append(b - a)
    gaps.sort()
    window.sort()
    p50, p99 = pct(gaps, 50), pct(window, 99)
    return {"streams_running_at_arrival": running, "itl_p50_s": p50, "itl_p99_all_s": pct(gaps, 99),
            "itl_p99_arrival_s": p99, "itl_max_s": max(gaps, default=None), "gaps_in_window": len(window),
            "p99_arrival_over_p50": p99 / p50 if p50 and p99 else None, "long_ttft_s": long["ttft"],
            "long_prompt_tokens": long["prompt_tokens"]}


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile of sorted values (nearest rank)."""
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def _median(values: list) -> object:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return values[0]
    return numbers[0] if len(set(numbers)) == 1 else statistics.median(numbers)


def median_of(runs: list[dict]) -> dict:
    """Each numeric field's median over the runs; a list of numbers, element by element."""
    out = dict(runs[0])
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
            out[key] = [_median([v[i] for v in values]) for i in range(len(first))]
        else:
            out[key] = _median(values)
    out["rounds"] = len(runs)
    out["per_round"] = runs
    return out
