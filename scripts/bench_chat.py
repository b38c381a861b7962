"""The chat's two targets (issue 15), measured rather than asserted in a test:

1. Time to first token of turn 7, after 6 turns of about 60 tokens each, with the cache kept
   (`ChatSession`) against a fresh run over the same conversation (what `generate` does). The chat's
   cache is rolled back to its state after turn 6 before each measurement; the two are interleaved
   and the medians reported.
2. Memory over a 30-turn scripted conversation: the process's resident memory after each turn, and
   the same minus the bytes of the KV cache, which should stay flat.

    .venv/bin/python scripts/bench_chat.py [--model REF] [--rounds 5] [--turns 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from llmgen.decoding.chat import ChatSession, Conversation, reference_reply, render
from llmgen.decoding.config import DecodingConfig
from llmgen.loading import models

SYSTEM = "You are a patient tutor. Answer in plain sentences."
QUESTIONS = [
    "I am planning a small vegetable garden behind my house in a rainy northern town. The soil is heavy "
    "clay and the beds get sun only in the afternoon. Which vegetables should I start with this spring?",
    "Thanks. How deep should the raised beds be for those vegetables, and what should I fill them with "
    "so that the clay underneath does not keep the roots too wet after a week of steady rain?",
    "My neighbour says I should add crushed eggshells and coffee grounds to the beds every month. Is that "
    "useful advice, or is it one of those garden myths? What actually changes in the soil when I do it?",
    "Slugs ate half of my lettuce last year, mostly at night after rain. Which methods keep them away "
    "without poisoning the hedgehogs and birds that visit the garden, and which ones are not worth trying?",
    "How often should I water the beds in July when it does not rain for two weeks, and is it better to "
    "water in the morning or in the evening for tomatoes, beans and the lettuce you mentioned earlier?",
    "At the end of the season, what should I do with the beds so that the soil is better next spring? "
    "Should I dig everything over, leave the old plants, or sow something on the empty beds for winter?",
    "Please summarise the whole plan we discussed as a short list of steps for the coming year.",
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cache_bytes(session: ChatSession) -> int:
    total = 0
    for layer in getattr(session.cache.lm.cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def first_token_times(loaded, rounds: int) -> dict:
    config = DecodingConfig(temperature=0.0, max_new_tokens=60, ignore_eos=True)
    session = ChatSession(loaded, Conversation(SYSTEM))
    for question in QUESTIONS[:6]:
        session.conversation.messages.append({"role": "user", "content": question})
        result = session.reply(config)
        session.conversation.messages.append({"role": "assistant", "content": result.text})
    after_six = (list(session.cache.tokens), session.cache.lm.length)
    session.conversation.messages.append({"role": "user", "content": QUESTIONS[6]})
    one = config.replace(max_new_tokens=1)
    chat_times, fresh_times, cached = [], [], 0
    for _ in range(rounds):
        session.cache.settle(after_six[0])  # back to the state after turn 6
        result = session.reply(one)
        chat_times.append(result.stats["prefill_seconds"])
        cached = result.stats["cached_tokens"]
        fresh = reference_reply(loaded, session.conversation.full(), one)
        fresh_times.append(fresh.stats["prefill_seconds"])
    prompt = len(render(loaded.tokenizer, session.conversation.full()))
    chat_ttft, fresh_ttft = statistics.median(chat_times), statistics.median(fresh_times)
    return {"prompt_tokens": prompt, "cached_tokens": cached, "chat_ttft_s": chat_ttft, "fresh_ttft_s": fresh_ttft,
            "speedup": fresh_ttft / chat_ttft, "chat_ttft_all": chat_times, "fresh_ttft_all": fresh_times}


def memory_over_turns(loaded, turns: int) -> dict:
    config = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)
    session = ChatSession(loaded, Conversation(SYSTEM))
    rows = []
    for turn in range(turns):
        session.conversation.messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        result = session.reply(config)
        session.conversation.messages.append({"role": "assistant", "content": result.text})
        rss, kv = rss_bytes(), cache_bytes(session)
        rows.append({"turn": turn + 1, "prompt_tokens": result.stats["prompt_tokens"],
                     "cached_tokens": result.stats["cached_tokens"], "rss_mb": rss / 2**20, "kv_mb": kv / 2**20,
                     "rss_minus_kv_mb": (rss - kv) / 2**20, "dropped_turns": result.stats.get("dropped_turns", 0)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"turns": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    loaded = models.load(args.model)
    started = time.perf_counter()
    report = {"model": args.model, "threads": torch.get_num_threads(), "ttft": first_token_times(loaded, args.rounds)}
    ttft = report["ttft"]
    print(f"turn 7: {ttft['prompt_tokens']} prompt tokens, {ttft['cached_tokens']} cached; time to first token "
          f"{ttft['chat_ttft_s']:.3f} s in the chat against {ttft['fresh_ttft_s']:.3f} s fresh "
          f"({ttft['speedup']:.1f}x)", flush=True)
    report["memory"] = memory_over_turns(loaded, args.turns)
    rows = report["memory"]["turns"]
    flat = [r["rss_minus_kv_mb"] for r in rows]
    print(f"{len(rows)} turns: RSS {rows[0]['rss_mb']:.0f} -> {rows[-1]['rss_mb']:.0f} MB, KV cache "
          f"{rows[-1]['kv_mb']:.1f} MB at the end, RSS minus KV {min(flat):.0f}-{max(flat):.0f} MB; "
          f"{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
