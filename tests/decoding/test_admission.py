"""Rows that start from copied cells, or whose prompts are prefilled in chunks between the steps of a
running batch (`decoding/admission.py`), decode exactly as without either: the same tokens and, on the
llama.cpp engine, the same logprobs bit for bit; on both real files and on torch.

- a chat turn: the next request begins with the last one's prompt and reply, held by the prefix cache;
- requests admitted together that share a long system prompt: one prefill, the others from its cells;
- a long prompt arriving while rows run: prefilled in chunks, one per step;
- rows cancelled while they share a prefix never change what a later row reads;
- the cache's bound holds, and it evicts the least recently used entry.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmgen.decoding.admission import Prefill
from llmgen.decoding.batch import Row, decode_rows, row_generator
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.logprobs import LogprobSpec
from llmgen.loading.engines.prefix import PrefixCache
from llmgen.loading.loaded import ModelInfo

TEXTS = {  # the system prompt and four questions: words for the real files, the tiny model's characters for torch
    "real": (("You are a careful assistant. Answer in one short paragraph, cite no sources, and say so when you "
              "do not know. Keep the tone friendly and plain. ") * 4,
             ["What is a lighthouse?", "Name a green vegetable.", "Why is the sky blue?", "Count to five."]),
    "tiny": ("a bad cafe. dead beef. fade. " * 2, ["abc", "hello.", "cab bag", "h"]),
}
GREEDY = DecodingConfig(max_new_tokens=10, temperature=0.0)
SEEDED = DecodingConfig(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=7)
SPEC = LogprobSpec(top=2)


@pytest.fixture(scope="module", params=["smollm2", "gemma", "torch"])
def model(request: pytest.FixtureRequest, char_model):
    from llmgen.loading import models

    if request.param == "torch":
        return models.load(str(char_model)), *TEXTS["tiny"]
    pytest.importorskip("llama_cpp")
    from tiny_gguf import gemma_path

    from llmgen.loading import llamacpp

    if not llamacpp.batch_invariance()[0]:
        pytest.skip("this llama.cpp build is not batch-invariant")
    path = str(gemma_path()) if request.param == "gemma" else models.DEFAULT_MODEL
    return models.load(path, engine="llamacpp", threads=2), *TEXTS["real"]


def encode(loaded, text: str) -> list[int]:
    return [int(i) for i in loaded.tokenizer(text)["input_ids"]]


class Counting:
    """An engine whose sequences count their forwards (how a chunked prefill went)."""

    def __init__(self, engine) -> None:
        self.engine, self.forwards, self.sizes = engine, 0, []

    def sequence(self):
        sequence, outer = self.engine.sequence(), self

        class Counted:
            def __getattr__(self, name):
                return getattr(sequence, name)

            def forward(self, ids, all_logits=False):
                outer.forwards += 1
                outer.sizes.append(len(ids))
                return sequence.forward(ids, all_logits)

        return Counted()


def run(loaded, prompts: list[list[int]], config: DecodingConfig, prefill: Prefill | None = None,
        arrivals: list[int] | None = None, cancel: set[int] = frozenset()) -> tuple[dict, dict]:
    """Decode `prompts` as rows; row i joins after `arrivals[i]` steps (default: all at once). The results
    and the rows by key."""
    rows = [Row(i, p, config, row_generator(config.seed, i), logprobs=SPEC) for i, p in enumerate(prompts)]
    results: dict[int, object] = {}

    def pending():
        step = 0
        for row, at in sorted(zip(rows, arrivals or [0] * len(rows)), key=lambda pair: pair[1]):
            while step < at:
                yield None
                step += 1
            yield row

    def done(row, result):
        results[row.key] = result

    def text(row, piece):
        if row.key in cancel:
            row.cancelled = True

    info = ModelInfo(loaded.tokenizer, loaded.eos_token_ids, loaded.context_length)
    decode_rows(loaded.engine.rows(8), pending(), info, batch_size=8, on_done=done, on_text=text, prefill=prefill)
    return results, {row.key: row for row in rows}


def assert_same(loaded, got, want) -> None:
    assert got.token_ids == want.token_ids
    if loaded.engine.name == "llamacpp":  # batch-invariant: the same bits
        assert [e["logprob"] for e in got.logprobs] == [e["logprob"] for e in want.logprobs]
    else:
        assert [e["logprob"] for e in got.logprobs] == pytest.approx([e["logprob"] for e in want.logprobs], abs=1e-4)


@pytest.mark.parametrize("config", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_chat_turn_starts_from_the_last_turns_cells(model, config) -> None:
    model, SYSTEM, QUESTIONS = model
    prefix = PrefixCache(1 << 30)
    first = encode(model, SYSTEM + QUESTIONS[0])
    reply = run(model, [first], config, Prefill(prefix))[0][0]
    assert len(prefix) == 1
    second = first + reply.token_ids + encode(model, " And " + QUESTIONS[1])
    got, rows = run(model, [second], config, Prefill(prefix))
    want = run(model, [second], config)[0]
    assert rows[0].cached >= len(first) + len(reply.token_ids) - 1  # all but the reply's last token
    assert_same(model, got[0], want[0])


@pytest.mark.parametrize("config", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_requests_sharing_a_system_prompt_prefill_it_once(model, config) -> None:
    model, SYSTEM, QUESTIONS = model
    prompts = [encode(model, SYSTEM + q) for q in QUESTIONS]
    prefix = PrefixCache(1 << 30)
    got, rows = run(model, prompts, config, Prefill(prefix), arrivals=[0, 0, 0, 3])
    want, _ = run(model, prompts, config, arrivals=[0, 0, 0, 3])
    shared = len(encode(model, SYSTEM)) - 2
    assert rows[0].cached == 0 and all(rows[i].cached >= shared for i in (1, 2, 3))
    for i in range(len(prompts)):
        assert_same(model, got[i], want[i])


@pytest.mark.parametrize("config", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_long_prompt_arriving_is_prefilled_in_chunks_between_steps(model, config) -> None:
    model, SYSTEM, QUESTIONS = model
    config = replace(config, max_new_tokens=24, ignore_eos=True)  # the short rows run while it is read
    short = [encode(model, q) for q in QUESTIONS[:3]]
    long = encode(model, SYSTEM * 2 + QUESTIONS[3])
    engine = Counting(model.engine)
    prefill = Prefill(None, chunk=16, engine=engine)
    got, _ = run(model, short + [long], config, prefill, arrivals=[0, 0, 0, 2])
    # the prompt but its last token, in chunks of at most 16 while the short rows run (fewer tokens when the
    # steps are fast: `chunk_size`); what is left when they have finished goes in one forward
    assert sum(engine.sizes) == len(long) - 1 and len(engine.sizes) >= 2 and max(engine.sizes[:-1]) <= 16
    want, _ = run(model, short + [long], config, arrivals=[0, 0, 0, 2])
    for i in range(4):
        assert_same(model, got[i], want[i])


def test_chunks_and_the_prefix_cache_together_and_cancelled_rows(model) -> None:
    """Rows sharing the system prompt, two of them cancelled after their first token; then a row that
    reuses the cache, prefilled in chunks: it equals the same row decoded fresh."""
    model, SYSTEM, QUESTIONS = model
    prompts = [encode(model, SYSTEM + q) for q in QUESTIONS]
    prefix = PrefixCache(1 << 30)
    prefill = Prefill(prefix, chunk=8, engine=model.engine)
    first, _ = run(model, prompts, GREEDY, prefill, cancel={1, 2})
    assert first[1].finish_reason == "cancelled" and first[0].finish_reason != "cancelled"
    later = prompts[2] + encode(model, " Also: " + QUESTIONS[0] + " " + QUESTIONS[1])
    got, rows = run(model, [later, prompts[0]], GREEDY, prefill, arrivals=[1, 0])
    assert rows[0].cached > 0
    want, _ = run(model, [later, prompts[0]], GREEDY, arrivals=[1, 0])
    assert_same(model, got[0], want[0])
    assert_same(model, got[1], want[1])


class Sized:
    def __init__(self, length: int, nbytes: int) -> None:
        self.length, self.nbytes = length, nbytes


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = PrefixCache(max_bytes=300, min_reuse=2)
    a, b, c = list(range(10)), list(range(100, 110)), list(range(200, 210))
    cache.store(a, Sized(10, 100))
    cache.store(b, Sized(10, 100))
    assert cache.lookup(a + [5]) is not None  # a is used: b is now the oldest
    cache.store(c, Sized(10, 150))
    assert cache.nbytes <= 300 and len(cache) == 2
    assert cache.lookup(b + [1]) is None and cache.lookup(a + [1]) is not None
    assert cache.stats.evicted == 1
    start = cache.lookup(a[:6] + [99])
    assert start is not None and start[1] == 6  # cut to the common prefix
    assert cache.lookup(a)[1] == 9  # a whole entry: all but the last token, whose logits are needed
    cache.store(a + [1, 2], Sized(12, 120))  # a is its prefix: replaced by it
    assert len(cache) == 2 and cache.covered(a)
    off = PrefixCache(max_bytes=0)
    off.store(a, Sized(10, 1))
    assert len(off) == 0
