"""Batched rows with the int4 model: `rowcache.RowCache` drives the lean Llama's own cache as it drives a
transformers cache (left padding, rows dropped and repeated, wider prompts joining), and every row equals
that prompt decoded alone, bit for bit (the int4 kernel and attention treat rows independently)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM, RowCache, row_cache


@pytest.fixture(scope="module")
def int4(char_model: Path):
    return models.load(str(char_model), quant="int4")


def test_int4_rows_equal_each_prompt_alone(int4) -> None:
    prompts = [[0, 5, 6, 7], [0, 8], [0, 9, 3, 4, 5, 6, 7]]
    rows = row_cache(int4.model)
    assert isinstance(rows, RowCache)
    logits = rows.add(prompts)
    alone = [CachedLM(int4.model) for _ in prompts]
    expected = torch.cat([lm.forward(p) for lm, p in zip(alone, prompts)])
    assert torch.equal(logits, expected)
    tokens = expected.argmax(-1)
    for _ in range(4):
        got = rows.step(tokens)
        expected = torch.cat([lm.forward([int(t)]) for lm, t in zip(alone, tokens)])
        assert torch.equal(got, expected)
        tokens = expected.argmax(-1)
    rows.select([0, 1])  # drop the longest row: the padding columns no row needs any more are cut
    assert rows.width == 8  # rows of 4 + 4 and 2 + 4 tokens; with the 7 + 4 row the batch was 11 wide
    tokens = tokens[[0, 1]]
    alone = alone[:2]
    got = rows.step(tokens)
    expected = torch.cat([lm.forward([int(t)]) for lm, t in zip(alone, tokens)])
    assert torch.equal(got, expected)
    wide = [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 4, 5, 6, 7, 8]  # wider than the batch: old rows get padded
    wide_lm = CachedLM(int4.model)
    assert torch.equal(rows.add([wide]), wide_lm.forward(wide))
    alone.append(wide_lm)
    tokens = torch.cat([expected.argmax(-1), torch.tensor([5])])
    for _ in range(2):  # every row, old and new, goes on as it would alone
        got = rows.step(tokens)
        expected = torch.cat([lm.forward([int(t)]) for lm, t in zip(alone, tokens)])
        assert torch.equal(got, expected)
        tokens = expected.argmax(-1)
    rows.select([2, 2, 0])  # a repeated row
    assert rows.rows == 3


def test_sample_n_with_int4_from_the_command_line(capsys, char_model: Path) -> None:
    import json

    from llmgen.cli import main

    args = ["generate", "-m", str(char_model), "--quant", "int4", "--raw", "--ignore-eos", "-N", "8", "--seed", "3",
            "--json"]
    assert main([*args, "-n", "3", "ab"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(len(r["token_ids"]) == 8 for r in rows)
    assert main([*args, "-n", "3", "ab"]) == 0  # reproducible with --seed
    assert [json.loads(line)["token_ids"] for line in capsys.readouterr().out.splitlines()] == \
        [r["token_ids"] for r in rows]


def test_int4_beams_equal_the_rows_decoded_one_by_one(int4) -> None:
    """Beam search on int4's batched rows (`RowCache`) finds what it finds when every beam is its own
    single-sequence cache, one forward per row (`SerialRows`): same hypotheses, same scores."""
    from llmgen.decoding.beam import beam_search
    from llmgen.decoding.config import DecodingConfig
    from llmgen.loading.engines.base import SerialRows

    class OneByOne:
        name, device = "torch", int4.engine.device

        def rows(self, capacity=1):
            return SerialRows(int4.engine.sequence, int4.device)

    config = DecodingConfig(num_beams=3, n=3, max_new_tokens=8, repetition_penalty=1.3, stop=("zz",))
    prompt = [0, 5, 6, 7, 5]
    batched = beam_search(int4.engine, prompt, config, int4.eos_token_ids, 8, int4.tokenizer)
    serial = beam_search(OneByOne(), prompt, config, int4.eos_token_ids, 8, int4.tokenizer)
    assert [h.token_ids for h in batched.hypotheses] == [h.token_ids for h in serial.hypotheses]
    assert [h.score for h in batched.hypotheses] == [h.score for h in serial.hypotheses]
    assert len(batched.hypotheses) == 3
