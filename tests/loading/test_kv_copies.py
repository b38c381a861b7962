"""A sequence's KV cells copied out of one cache and into another (`save`, `load`, `add(prompts, starts)`)
give the same logits, bit for bit, as prefilling the same tokens: what the prefix cache, prompt-cache files
and chunked prefill rest on.

On llama.cpp, on both real files: from a one-stream sequence into a context of 4 streams and back, cut to a
shorter prefix, and past Gemma's 512-token sliding window (where llama.cpp's own sequence state leaves
cells out; `llamacpp_state`'s NOTE). On torch, with a tiny transformers model and the int4 one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmgen.loading.engines.llamacpp_state import CellState, StateFormatError, _payloads

TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
        "combined movable metal type, oil-based ink and a screw press. ")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_a_state_blob_is_rebuilt_for_any_stream_count() -> None:
    one = CellState((np.frombuffer(b"\x02\x00\x00\x00payload", dtype=np.uint8),))
    magic = b"\xd8\x3c\x14\xaf\x00\x00\x00\x00"
    assert one.blob(1).tobytes() == magic + b"\x01\x00\x00\x00\x02\x00\x00\x00payload"
    assert one.blob(3).tobytes() == magic + b"\x03\x00\x00\x00\x02\x00\x00\x00payload" + b"\x00" * 8
    with pytest.raises(StateFormatError):
        _payloads(memoryview(b"\x01\x00\x00\x00\x05\x00\x00\x00"), 0, None)  # 5 cells, no bytes for them


@pytest.fixture(params=["torch", "llamacpp"])
def real_or_none(request: pytest.FixtureRequest):
    """None for the torch engine (the test loads the tiny model), else SmolLM2 on llama.cpp."""
    if request.param == "torch":
        return None
    pytest.importorskip("llama_cpp")
    from llmgen.loading import models

    return models.load(models.DEFAULT_MODEL, engine="llamacpp", threads=2)


@pytest.fixture(scope="module", params=["smollm2", "gemma"])
def real(request: pytest.FixtureRequest):
    pytest.importorskip("llama_cpp")
    from tiny_gguf import gemma_path

    from llmgen.loading import llamacpp, models

    if not llamacpp.batch_invariance()[0]:
        pytest.skip("this llama.cpp build is not batch-invariant")
    path = str(gemma_path()) if request.param == "gemma" else models.DEFAULT_MODEL
    loaded = models.load(path, engine="llamacpp", threads=2)
    ids = [int(i) for i in loaded.tokenizer(TEXT * 12)["input_ids"]]  # ~600 tokens: past Gemma's window
    return loaded, ids


def fresh(loaded, ids: list[int], extra: list[int]) -> torch.Tensor:
    seq = loaded.engine.sequence()
    return torch.cat([seq.forward(ids), seq.forward(extra, all_logits=True)])  # [1 + len(extra), vocab]


@pytest.mark.parametrize("cut", [None, 300, 40])
def test_llama_cpp_cells_copied_equal_a_prefill(real, cut: int | None) -> None:
    loaded, ids = real
    n = len(ids) if cut is None else cut
    source = loaded.engine.sequence()
    source.forward(ids)
    cells = source.save()
    assert cells is not None and cells.length == len(ids) and cells.nbytes > 0
    want = fresh(loaded, ids[:n - 1], [ids[n - 1], 11, 22, 33])[1:]  # after ids[:n], 11, 22, 33
    # into another sequence, cut to n - 1 tokens, then on
    seq = loaded.engine.sequence()
    seq.load(cells, n - 1)
    got = torch.cat([seq.forward([ids[n - 1]]), seq.forward([11, 22, 33], all_logits=True)])
    assert same(got, want)
    # into a row of a 4-stream rows context, beside other rows
    rows = loaded.engine.rows(4)
    rows.add([ids[:7], ids[3:20]])
    first = rows.add([ids[:n]], [(cells, n - 1)])[0]
    assert same(first, want[0])
    logits = rows.step(torch.tensor([5, 6, 11]))
    assert same(logits[2], want[1])
    # and out of that row again, into a sequence
    copy = rows.save(2)
    assert copy is not None and copy.length == n + 1
    again = loaded.engine.sequence()
    again.load(copy, n + 1)
    assert same(again.forward([22, 33], all_logits=True), want[2:])


def test_a_context_that_grows_past_the_window_keeps_its_logits(real) -> None:
    """A sequence grows its context by copying its cells (`_Context.grown`), across Gemma's window too."""
    loaded, ids = real
    want = fresh(loaded, ids[:1], ids[1:])  # the prompt one token at a time after the first
    seq = loaded.engine.sequence()
    got = [seq.forward(ids[:1])]
    for start in range(1, len(ids), 97):  # contexts start at 512 cells and grow as tokens come
        got.append(seq.forward(ids[start:start + 97], all_logits=True))
    assert same(torch.cat(got), want)


@pytest.mark.parametrize("quant", ["none", "int4"])
def test_torch_cells_copied_give_the_same_logits(quant: str, char_model) -> None:
    from llmgen.loading import models

    loaded = models.load(str(char_model), quant=quant)
    ids = [3 + (i * 7) % 10 for i in range(57)]
    source = loaded.engine.sequence()
    source.forward(ids)
    cells = source.save()
    assert cells is not None and cells.length == len(ids)
    want = fresh(loaded, ids[:39], [ids[39], 7, 8])[1:]  # after ids[:40], 7, 8
    seq = loaded.engine.sequence()
    seq.load(cells, 39)
    got = torch.cat([seq.forward([ids[39]]), seq.forward([7, 8], all_logits=True)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    rows = loaded.engine.rows(2)
    rows.add([ids[:9]])
    first = rows.add([ids[:40]], [(cells, 39)])[0]
    torch.testing.assert_close(first, want[0], rtol=0, atol=1e-5)
    copy = rows.save(1)
    assert copy is not None and copy.length == 40


def test_rows_keep_the_prompts_order_when_starts_and_fresh_prompts_mix(char_model, real_or_none) -> None:
    """`add(prompts, starts)` appends row i for prompt i whichever of them start from copies: the rows that
    follow are stepped in that order (a joining row with a start before a fresh request, in serve)."""
    loaded = real_or_none
    if loaded is None:
        from llmgen.loading import models

        loaded = models.load(str(char_model))
    ids = [3 + (i * 7) % 10 for i in range(40)]
    source = loaded.engine.sequence()
    source.forward(ids)
    cells = source.save()
    other = [4, 5, 6, 7]
    rows = loaded.engine.rows(4)
    first = rows.add([ids + [5], other, ids[:30] + [9]], [(cells, len(ids)), None, (cells, 30)])
    stepped = rows.step(torch.tensor([6, 7, 8]))
    for got, then, (prompt, token) in zip(first, stepped, [(ids + [5], 6), (other, 7), (ids[:30] + [9], 8)]):
        alone = loaded.engine.sequence()
        want = [alone.forward(prompt)[0], alone.forward([token])[0]]
        torch.testing.assert_close(torch.stack([got, then]), torch.stack(want), rtol=0, atol=1e-5)
