"""Batch invariance of the llama.cpp engine, on the real quantized files: a row's logits depend on its own
tokens only, bit for bit (docs/engines.md, "Batch invariance").

The needle: one prompt decoded alone (a prefill, then one token per `llama_decode`) against the same prompt
- verified k tokens at a time, with rollbacks between (a speculative round), for k = 1..8;
- prefilled in two parts, and again after a rollback (a reused prefix);
- inside batches of 2, 4, 8 and 16 rows whose other prompts, of other lengths, join and leave at other
  steps, the needle itself joining a running batch in one case;
- repeated into several rows from one prefill (`-n`), the rows stepping together.
Every logit is compared with `torch.equal`: nothing is close enough but the same bits.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace

import pytest
import torch

pytest.importorskip("llama_cpp")

from tiny_gguf import gemma_path  # noqa: E402

from llmgen.loading import llamacpp, models  # noqa: E402

INVARIANT, WHY = llamacpp.batch_invariance() if llamacpp.available() else (False, "no llama.cpp")
if os.environ.get("LLMGEN_FORCE_INVARIANCE_TESTS"):  # to show what a build that is not invariant does
    INVARIANT = True
needs_invariant = pytest.mark.skipif(not INVARIANT, reason=f"this llama.cpp build is not batch-invariant: {WHY}")

STEPS = 12
NEEDLE = "The history of the printing press begins in the fifteenth century, when"
OTHERS = ["Hi", "Write a long poem about the sea, the sky and the stars above the mountains at night.",
          "2+2=", "Once upon a time, in a land far away, there lived a", "def fib(n):", "List three colours:",
          "The capital of France is", "Q: What is a cat?\nA:", "Tell me a story about a dragon who",
          "x", "SELECT * FROM users WHERE", "Good morning, everyone. Today we", "import numpy as np\n",
          "Dear Sir or Madam,", "1, 2, 3, 4,", "<html><body>"]


def test_ci_builds_a_batch_invariant_llama_cpp() -> None:
    """`make test` builds llama-cpp-python without llamafile's sgemm (`make llamacpp`); CI must run the
    exactness tests below, not skip them."""
    if not os.environ.get("CI"):
        pytest.skip("checked in CI, where make test builds the extra")
    assert INVARIANT, WHY


def test_the_report_names_llamafile_as_the_reason() -> None:
    ok, why = llamacpp.batch_invariance("CPU : AVX2 = 1 | LLAMAFILE = 1 | OPENMP = 1 |")
    assert not ok and "llamafile" in why and "GGML_LLAMAFILE=OFF" in why
    assert llamacpp.batch_invariance("CPU : AVX2 = 1 | OPENMP = 1 | REPACK = 1 |")[0]


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def real(request: pytest.FixtureRequest):
    if request.param == "gemma":
        path = gemma_path()  # skips without the file (make gemma)
        loaded = models.load(str(path), engine="llamacpp", threads=2)
    else:
        loaded = models.load(models.DEFAULT_MODEL, engine="llamacpp", threads=2)
    encode = lambda text: [int(i) for i in loaded.tokenizer(text)["input_ids"]]  # noqa: E731
    prompt = encode(NEEDLE)
    sequence = loaded.engine.sequence()
    logits = [sequence.forward(prompt)[0]]
    tokens: list[int] = []
    for _ in range(STEPS):
        tokens.append(int(logits[-1].argmax()))
        logits.append(sequence.forward([tokens[-1]])[0])
    return loaded, prompt, tokens, torch.stack(logits), [encode(text) for text in OTHERS]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


@needs_invariant
@pytest.mark.parametrize("k", range(1, 9))
def test_a_verify_of_k_tokens_equals_one_token_at_a_time(real, k: int) -> None:
    loaded, prompt, tokens, alone, _ = real
    sequence = loaded.engine.sequence()
    assert same(sequence.forward(prompt)[0], alone[0])
    done = 0
    while done < STEPS:
        chunk = tokens[done:done + k]
        got = sequence.forward(chunk, all_logits=True)  # [len(chunk), vocab]
        for j in range(len(chunk)):
            assert same(got[j], alone[done + 1 + j]), (k, done + j)
        keep = 1 + (done % len(chunk))  # a rejection: the round keeps a prefix of its tokens
        sequence.rollback(len(prompt) + done + keep)
        done += keep


@needs_invariant
def test_a_reused_prefix_gives_the_logits_of_a_fresh_prefill(real) -> None:
    loaded, prompt, tokens, alone, _ = real
    sequence = loaded.engine.sequence()
    half = len(prompt) // 2
    sequence.forward(prompt[:half])
    assert same(sequence.forward(prompt[half:])[0], alone[0])
    sequence.forward(tokens[:5])
    sequence.rollback(half)  # the next turn keeps the shared prefix only
    assert same(sequence.forward(prompt[half:] + tokens[:3])[0], alone[3])


@needs_invariant
@pytest.mark.parametrize("size", [2, 4, 8, 16])
def test_the_needle_inside_batches_of_other_rows(real, size: int) -> None:
    """The needle beside size-1 other rows of other lengths that join and leave at other steps."""
    loaded, prompt, tokens, alone, others = real
    generator = torch.Generator().manual_seed(size)
    joins = torch.randint(0, 6, (size - 1,), generator=generator).tolist()
    stays = torch.randint(2, STEPS, (size - 1,), generator=generator).tolist()
    needle_joins = 3 if size == 4 else 0  # once, the needle joins a batch that is already running
    rows = loaded.engine.rows()
    names: list[str | int] = []  # what each row of `rows` is: "needle" or the index of another prompt
    for step in range(STEPS + 1):
        # rows that are done leave
        keep = [r for r, name in enumerate(names) if name == "needle" or step < joins[name] + stays[name]]
        if len(keep) < len(names):
            rows.select(keep)
            names = [names[r] for r in keep]
        if names:
            feed = [tokens[step - needle_joins - 1] if name == "needle"
                    else int(torch.randint(100, 1000, (1,), generator=generator)) for name in names]
            logits = rows.step(torch.tensor(feed))
            if "needle" in names:
                assert same(logits[names.index("needle")], alone[step - needle_joins]), (size, step)
        joining = [i for i in range(size - 1) if joins[i] == step]
        new = ([prompt] if step == needle_joins else []) + [others[i % len(others)] for i in joining]
        if new:
            first = rows.add(new)
            if step == needle_joins:
                assert same(first[0], alone[0]), (size, step)
            names += (["needle"] if step == needle_joins else []) + joining
        if step - needle_joins >= STEPS:
            break


@needs_invariant
def test_rows_repeated_from_one_prefill_step_as_the_prompt_alone(real) -> None:
    loaded, prompt, tokens, alone, _ = real
    rows = loaded.engine.rows()
    assert same(rows.add([prompt])[0], alone[0])
    rows.select([0, 0, 0, 0])
    for step in range(6):
        logits = rows.step(torch.tensor([tokens[step]] * 4))
        for r in range(4):
            assert same(logits[r], alone[step + 1]), (step, r)


# --- the guarantees on the real files: speculative, batched, chat --------------------------------------------------

from llmgen.decoding.batch import Row, decode_rows, row_generator  # noqa: E402
from llmgen.decoding.chat import ChatSession, reference_reply  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.decoding.constraints import new_matcher  # noqa: E402
from llmgen.decoding.logprobs import LogprobSpec  # noqa: E402
from llmgen.decoding.plain import plain_tokens  # noqa: E402
from llmgen.decoding.sampling import make_generator  # noqa: E402
from llmgen.decoding.sequence import SequenceResult, run_sequence  # noqa: E402
from llmgen.decoding.speculative.runner import speculate  # noqa: E402

CONSTRAINED = importlib.util.find_spec("llguidance") is not None
TOKENS = 24
REWRITE = ("Repeat this line twice, word for word: the quick brown fox jumps over the lazy dog near the river "
           "bank, then stops.")
SCHEMA = '{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, ' \
         '"required": ["name", "age"]}'


def chat_ids(loaded, text: str) -> list[int]:
    return [int(i) for i in loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                                 add_generation_prompt=True)]


def plain(loaded, prompt: list[int], config: DecodingConfig, logprobs: LogprobSpec | None = None) -> SequenceResult:
    tokens = plain_tokens(loaded.engine.sequence(), prompt, config, make_generator(config.seed), logprobs,
                          new_matcher(config, loaded))
    return run_sequence(tokens, loaded.tokenizer, prompt, config, loaded.eos_token_ids, loaded.context_length)


@pytest.fixture(scope="module")
def draft(real):
    """A draft model on the same engine: the same file, loaded again (its own contexts)."""
    return models.load(str(real[0].path), engine="llamacpp", threads=2)


@pytest.fixture(scope="module")
def rewrite(real):
    """Plain greedy on a rewriting prompt (where drafts are accepted), with logprobs: the reference."""
    loaded = real[0]
    prompt = chat_ids(loaded, REWRITE)
    config = DecodingConfig(temperature=0.0, max_new_tokens=TOKENS, ignore_eos=True)
    return prompt, config, plain(loaded, prompt, config, LogprobSpec(2))


@needs_invariant
@pytest.mark.parametrize("gamma", range(1, 9))
def test_speculative_greedy_equals_plain_greedy(real, draft, rewrite, gamma: int) -> None:
    """Every γ, the n-gram and the model draft: the same tokens and the same logprobs as plain greedy."""
    prompt, config, reference = rewrite
    for proposer in (None, draft):
        fast = speculate(real[0], proposer, prompt, config, gamma=gamma, logprobs=LogprobSpec(2))
        assert fast.token_ids == reference.token_ids, (gamma, proposer is not None)
        assert fast.logprobs == reference.logprobs, (gamma, proposer is not None)


@needs_invariant
@pytest.mark.skipif(not CONSTRAINED, reason="the constrained extra (llguidance) is not installed")
@pytest.mark.parametrize("gamma", [3, 8])
def test_speculative_greedy_with_a_schema_equals_plain_greedy(real, draft, gamma: int) -> None:
    loaded = real[0]
    prompt = chat_ids(loaded, "Give me a JSON object for a person called Ada who is 36.")
    config = DecodingConfig(temperature=0.0, max_new_tokens=TOKENS, schema=SCHEMA)
    reference = plain(loaded, prompt, config)
    for proposer in (None, draft):
        assert speculate(loaded, proposer, prompt, config, gamma=gamma).token_ids == reference.token_ids, gamma


ROWS = 6


def row_config(i: int) -> DecodingConfig:
    """Rows of other lengths, greedy and seeded (temperature 0.8, each row its own generator)."""
    if i % 2:
        return DecodingConfig(temperature=0.0, max_new_tokens=8 + 3 * i, ignore_eos=True)
    return DecodingConfig(temperature=0.8, seed=7, max_new_tokens=8 + 3 * i, ignore_eos=True)


@pytest.fixture(scope="module")
def alone(real) -> list[SequenceResult]:
    loaded, others = real[0], real[4]
    out = []
    for i in range(ROWS):
        config = row_config(i)
        tokens = plain_tokens(loaded.engine.sequence(), others[i], config, row_generator(config.seed, i), LogprobSpec(1))
        out.append(run_sequence(tokens, loaded.tokenizer, others[i], config, loaded.eos_token_ids, loaded.context_length))
    return out


@needs_invariant
@pytest.mark.parametrize("batch_size", [2, 6])
def test_batched_rows_equal_each_row_alone(real, alone, batch_size: int) -> None:
    """`--input` and serve: rows continuously batched (joining as others finish), greedy and seeded, with
    logprobs: each equals its prompt alone, token for token and logprob for logprob."""
    loaded, others = real[0], real[4]
    rows = [Row(i, list(others[i]), row_config(i), row_generator(row_config(i).seed, i), logprobs=LogprobSpec(1))
            for i in range(ROWS)]
    got: dict[int, SequenceResult] = {}
    decode_rows(loaded.engine.rows(), rows, loaded.info, batch_size=batch_size,
                on_done=lambda row, result: got.__setitem__(row.key, result))
    for i in range(ROWS):
        assert got[i].token_ids == alone[i].token_ids, (batch_size, i)
        assert got[i].logprobs == alone[i].logprobs, (batch_size, i)


@needs_invariant
def test_chat_with_a_reused_prefix_equals_the_conversation_decoded_fresh(real) -> None:
    """Each turn reuses the cached conversation and prefills only what is new: greedy and seeded turns equal
    the whole conversation decoded on a fresh cache."""
    loaded = real[0]
    session = ChatSession(loaded)
    turns = ["Name a colour.", "And another one?", "Why do you like it?"]
    for i, text in enumerate(turns):
        config = DecodingConfig(temperature=0.0, max_new_tokens=12) if i % 2 == 0 else \
            DecodingConfig(temperature=0.8, seed=5, max_new_tokens=12)
        fresh = config if config.seed is None else replace(config, seed=config.seed + i)  # reply i draws from seed + i
        expected = reference_reply(loaded, session.conversation.full() + [{"role": "user", "content": text}], fresh)
        assert session.send(text, config).token_ids == expected.token_ids, i
