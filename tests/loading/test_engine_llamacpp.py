"""The llama.cpp engine (`loading/engines/llamacpp.py`): the cache operations, exactly.

On a tiny random Llama written as a GGUF file by the test (`tiny_gguf.py`), where a forward takes
~0.1 ms: a verify forward's logits equal step-by-step logits; rollback forgets; a context that grows
(its sequences' KV state copied) gives the same logits as one that was large from the start; rows
that are repeated, reordered and dropped give each row the logits of the same tokens decoded alone;
a logits tensor the caller holds is not overwritten by the next decode.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llama_cpp")

from tiny_gguf import VOCAB, write_tiny_llama  # noqa: E402

from llmgen.loading import models  # noqa: E402
from llmgen.loading.engines import llamacpp as engine  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf", seed=1, context=2048)
    return models.load(str(path), engine="llamacpp", threads=1)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to 1e-5: with the engine's float32 KV cache, a batch changes only the summation order of the
    tiny model's float32 matmuls (on the Q4_1 file, equal bit for bit: test_engine_llamacpp_exact.py)."""
    return bool(torch.allclose(a, b, atol=1e-5, rtol=0)) and torch.equal(a.argmax(-1), b.argmax(-1))


def stepwise(loaded, tokens: list[int]) -> torch.Tensor:
    """Logits after each token, one forward per token, on a fresh sequence."""
    lm = loaded.engine.sequence()
    return torch.cat([lm.forward([t]) for t in tokens])  # [len, vocab]


def test_the_loaded_model_reports_the_engine_and_the_file_vocabulary(tiny) -> None:
    assert tiny.engine.name == "llamacpp" and tiny.model is None
    assert tiny.vocab_size == VOCAB and tiny.context_length == 2048
    assert tiny.eos_token_ids == frozenset({2})


def test_all_logits_equal_one_token_at_a_time_and_rollback_forgets(tiny) -> None:
    tokens = [1, 5, 9, 3, 7, 7, 12, 4]
    lm = tiny.engine.sequence()
    together = lm.forward(tokens, all_logits=True)  # [8, vocab]
    assert together.shape == (8, VOCAB) and together.dtype == torch.float32
    assert close(together, stepwise(tiny, tokens))
    lm.rollback(3)
    assert lm.length == 3
    again = lm.forward([9, 9])  # a different continuation after the rollback
    assert close(again, stepwise(tiny, [1, 5, 9, 9, 9])[-1:])


def test_the_logits_a_caller_holds_survive_the_next_decode(tiny) -> None:
    lm = tiny.engine.sequence()
    first = lm.forward([1, 5, 9], all_logits=True)
    kept = first.clone()
    lm.forward([3, 4, 5, 6], all_logits=True)
    assert torch.equal(first, kept)


def test_a_growing_context_gives_the_logits_of_a_large_one(tiny) -> None:
    """600 tokens cross the first context (512 cells); its state moves to a larger one bit for bit."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, VOCAB, (600,), generator=generator).tolist()
    grown = tiny.engine.sequence()
    logits = torch.cat([grown.forward(tokens[:500], all_logits=True), grown.forward(tokens[500:], all_logits=True)])
    assert grown.context.n_ctx > 512
    large = engine.LlamaSequence(tiny.engine.model)
    large.context = engine._Context(tiny.engine.model, 1024, 1)
    reference = torch.cat([large.forward(tokens[:500], all_logits=True), large.forward(tokens[500:], all_logits=True)])
    assert torch.equal(logits, reference)


def test_rows_can_be_repeated_reordered_and_dropped(tiny) -> None:
    prompts = [[1, 4, 5, 6], [1, 9, 8], [1, 3]]
    rows = tiny.engine.rows()
    first = rows.add(prompts)  # [3, vocab]
    for prompt, logits in zip(prompts, first):
        assert close(logits, stepwise(tiny, prompt)[-1])
    histories = [list(p) for p in prompts]
    plan = [[2, 0, 0, 1], [3, 1, 2], [0, 0, 2, 1, 1], [4, 2]]  # a select before each step
    for step, indices in enumerate(plan):
        rows.select(indices)
        histories = [list(histories[i]) for i in indices]
        tokens = torch.tensor([3 + (step * 7 + r * 5) % (VOCAB - 3) for r in range(len(indices))])
        logits = rows.step(tokens)  # [rows, vocab]
        for r, token in enumerate(tokens.tolist()):
            histories[r].append(token)
            assert close(logits[r], stepwise(tiny, histories[r])[-1]), (step, r)
    assert rows.rows == 2
    rows.select([])
    assert rows.rows == 0
    more = rows.add([[1, 4]])  # rows can be added again after all were dropped
    assert close(more[0], stepwise(tiny, [1, 4])[-1])


def test_rows_grow_past_the_first_context(tiny) -> None:
    """Eight rows of 100 tokens hold 800 cells: the rows context grows (each row's state copied) and gives
    the logits of a rows context that was large from the start; each prefilled row, those of its prompt alone."""
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, VOCAB, (8, 100), generator=generator).tolist()
    rows = tiny.engine.rows()
    rows.add(prompts[:1])  # a first context of 512 cells
    logits = torch.cat([logits_of_rest := rows.add(prompts[1:]), rows.step(torch.tensor([5] * 8))])
    assert rows.context.n_seq >= 8
    large = tiny.engine.rows()
    large.context = engine._Context(tiny.engine.model, 1024, 8)
    large.add(prompts[:1])
    assert torch.equal(logits, torch.cat([large.add(prompts[1:]), large.step(torch.tensor([5] * 8))]))
    for prompt, row in zip(prompts[1:], logits_of_rest):
        assert close(row, tiny.engine.sequence().forward(prompt)[0])


def test_beams_on_llama_cpp_rows_equal_beams_over_one_sequence_each(tiny) -> None:
    """Beam search uses only the rows interface: on llama.cpp's rows (seq_cp for a beam with two children)
    it finds what it finds with one llama.cpp sequence per beam, one forward per row."""
    from llmgen.decoding.beam import beam_search
    from llmgen.decoding.config import DecodingConfig
    from llmgen.loading.engines.base import SerialRows

    class OneByOne:
        name, device = "llamacpp", tiny.engine.device

        def rows(self, capacity=1):
            return SerialRows(tiny.engine.sequence, tiny.device)

    config = DecodingConfig(num_beams=3, n=3, max_new_tokens=6, repetition_penalty=1.2)
    prompt = [1, 5, 6, 7, 5]
    batched = beam_search(tiny.engine, prompt, config, tiny.eos_token_ids, 6, tiny.tokenizer)
    serial = beam_search(OneByOne(), prompt, config, tiny.eos_token_ids, 6, tiny.tokenizer)
    assert len(batched.hypotheses) == 3
    assert [h.token_ids for h in batched.hypotheses] == [h.token_ids for h in serial.hypotheses]
    torch.testing.assert_close(torch.tensor([h.score for h in batched.hypotheses]),
                               torch.tensor([h.score for h in serial.hypotheses]), rtol=1e-5, atol=1e-5)
