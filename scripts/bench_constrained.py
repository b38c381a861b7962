#!/usr/bin/env python
"""The cost of constrained output: the token mask per token, per library, and decode tokens/s.

    python scripts/bench_constrained.py               # mask cost (llguidance; xgrammar if importable) + tok/s
    python scripts/bench_constrained.py --micro-only  # only the mask cost, a few seconds

Mask cost: a fixed valid output (a JSON object for the schema below, a string for the regex) is
tokenized with the embedded SmolLM2 tokenizer (49,152 tokens) and replayed token by token: each step
computes the mask of the next token, then advances by the token. Reported: the median microseconds per
token of the library's own mask call, and of llmgen's `GrammarMatcher.allowed()` (the library call plus
unpacking the bitmask into the bool mask the chain applies), and the grammar's compile time.
End to end: greedy decode tokens/s of the embedded model with and without --schema, interleaved rounds,
the median of each (end-of-sequence ignored without the schema, so both decode about as many tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.constraints import compile_constraint  # noqa: E402
from llmgen.decoding.generation import generate, stream  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.decoding.sequence import run_sequence  # noqa: E402
from llmgen.loading import models  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "pet": {"enum": ["cat", "dog", "none"]},
        "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    "required": ["street", "city"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["name", "age", "email", "pet", "address", "tags"],
    "additionalProperties": False,
}
VALUE = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "pet": "cat",
         "address": {"street": "12 St James's Square", "city": "London"},
         "tags": ["mathematician", "writer", "first programmer"]}
REGEX = r"[A-Z][a-z]+ [A-Z][a-z]+, born (1[89][0-9]{2}|20[0-2][0-9]) in [A-Z][a-z]+\."
REGEX_TEXT = "Ada Lovelace, born 1815 in London."
PROMPT = "Describe Ada Lovelace as a JSON object with name, age, email, pet, address and tags:"


def median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def replay_llguidance(loaded, config: DecodingConfig, tokens: list[int]) -> dict:
    started = time.perf_counter()
    constraint = compile_constraint(config, loaded.tokenizer, loaded.eos_token_ids, loaded.vocab_size)
    compile_s = time.perf_counter() - started
    raw, full = [], []
    # NOTE: two passes over fresh matchers: a second mask call in the same state would hit llguidance's cache.
    matcher = constraint.matcher()
    for token in tokens:
        t0 = time.perf_counter()
        matcher._matcher.compute_bitmask()
        raw.append(time.perf_counter() - t0)
        matcher.advance(token)
    matcher = constraint.matcher()
    for token in tokens:
        t0 = time.perf_counter()
        allowed = matcher.allowed()
        full.append(time.perf_counter() - t0)
        assert bool(allowed[token]), token
        matcher.advance(token)
    return {"library_mask_us": median_us(raw), "llmgen_mask_us": median_us(full),
            "compile_ms": round(compile_s * 1e3, 1), "tokens": len(tokens)}


def replay_xgrammar(loaded, kind: str, tokens: list[int]) -> dict | None:
    try:
        import xgrammar as xgr
    except ImportError:
        return None
    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(loaded.tokenizer, vocab_size=loaded.vocab_size,
                                              stop_token_ids=sorted(loaded.eos_token_ids))
    compiler = xgr.GrammarCompiler(info)
    compiled = (compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(",", ":")) if kind == "schema"
                else compiler.compile_regex(REGEX))
    compile_s = time.perf_counter() - started
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    raw = []
    for token in tokens:
        t0 = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        raw.append(time.perf_counter() - t0)
        assert matcher.accept_token(token), token
    return {"library_mask_us": median_us(raw), "compile_ms": round(compile_s * 1e3, 1), "tokens": len(tokens)}


def micro(loaded) -> dict:
    schema_tokens = loaded.tokenizer(json.dumps(VALUE, separators=(",", ":")))["input_ids"]
    regex_tokens = loaded.tokenizer(REGEX_TEXT)["input_ids"]
    out = {}
    for kind, config, tokens in (("schema", DecodingConfig(schema=json.dumps(SCHEMA)), schema_tokens),
                                 ("regex", DecodingConfig(regex=REGEX), regex_tokens)):
        out[kind] = {"llguidance": replay_llguidance(loaded, config, tokens),
                     "xgrammar": replay_xgrammar(loaded, kind, tokens)}
    return out


def decode_rate(loaded, config: DecodingConfig) -> tuple[float, int]:
    """Plain decoding's tok/s and tokens; constrained when `config` has a schema."""
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    result = generate(loaded, ids, config, generator=make_generator(0))
    return result.stats["tokens_per_second"], len(result.token_ids)


def forced_draft(loaded, rounds: int, max_new_tokens: int) -> dict:
    """Do llguidance's forced tokens pay as a free draft? Greedy, --schema: plain, n-gram, n-gram with the
    forced tokens proposed first (`ForcedFirst`); tok/s (median) and tokens per target forward."""
    from llmgen.decoding.speculative import FixedGamma, NgramProposer, SpeculativeStats, speculative_tokens
    from llmgen.decoding.speculative.proposers import ForcedFirst

    config = DecodingConfig(temperature=0, max_new_tokens=max_new_tokens, schema=json.dumps(SCHEMA))
    constraint = compile_constraint(config, loaded.tokenizer, loaded.eos_token_ids, loaded.vocab_size)
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                               tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    out: dict[str, dict] = {}
    for _ in range(rounds):
        for name in ("plain", "ngram", "ngram+forced"):
            matcher = constraint.matcher()
            stats = SpeculativeStats()
            if name == "plain":
                source = stream(loaded, ids, config, make_generator(0), matcher=matcher).tokens
            else:
                proposer = NgramProposer(4, 2)
                if name == "ngram+forced":
                    proposer = ForcedFirst(proposer, matcher)
                # NOTE: the loop itself: `generation.stream` always proposes the forced tokens first
                source = speculative_tokens(loaded.engine.sequence(), proposer, ids, config, make_generator(0),
                                            FixedGamma(5), max_new_tokens, stats, matcher=matcher)
            result = run_sequence(source, loaded.tokenizer, ids, config, loaded.eos_token_ids, loaded.context_length)
            entry = out.setdefault(name, {"rates": [], "tokens": len(result.token_ids), "text": result.text})
            entry["rates"].append(result.stats["tokens_per_second"])
            if name != "plain":
                entry["tokens_per_forward"] = round(stats.as_dict().get("tokens_per_target_forward", 0), 2)
    for entry in out.values():
        entry["tokens_per_second"] = round(statistics.median(entry["rates"]), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-only", action="store_true")
    parser.add_argument("--forced", action="store_true", help="also: forced tokens as a free draft")
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "bench-constrained.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = models.load(args.model)
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads": 1,
              "vocab": loaded.vocab_size, "mask": micro(loaded)}
    if not args.micro_only:
        plain = DecodingConfig(temperature=0, max_new_tokens=args.max_new_tokens, ignore_eos=True)
        schema = DecodingConfig(temperature=0, max_new_tokens=args.max_new_tokens, schema=json.dumps(SCHEMA))
        rates: dict[str, list[float]] = {"plain": [], "schema": []}
        lengths = {}
        for _ in range(args.rounds):
            for name, config in (("plain", plain), ("schema", schema)):
                rate, lengths[name] = decode_rate(loaded, config)
                rates[name].append(rate)
        report["decode"] = {name: {"tokens_per_second": round(statistics.median(r), 2), "rounds": r,
                                   "tokens": lengths[name]} for name, r in rates.items()}
        report["decode"]["ratio"] = round(report["decode"]["schema"]["tokens_per_second"]
                                          / report["decode"]["plain"]["tokens_per_second"], 3)
    if args.forced:
        report["forced_draft"] = forced_draft(loaded, args.rounds, args.max_new_tokens)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
