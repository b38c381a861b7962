"""Batched rows with the int4 model: `rowcache.RowCache` drives the lean Llama's own cache as it drives a
transformers cache (left padding, rows dropped and repeated, wider prompts joining), and every row equals
that prompt decoded alone, bit for bit (the int4 kernel and attention treat rows independently)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmgen import models
from llmgen.decode import CachedLM
from llmgen.rowcache import RowCache, row_cache


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
    rows.select([2, 0])  # drop a row; padding columns that no row needs are cut
    got = rows.step(tokens[[2, 0]])
    expected = torch.cat([alone[i].forward([int(tokens[i])]) for i in (2, 0)])
    assert torch.equal(got, expected)
    wide = [0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 4, 5, 6, 7, 8]  # wider than the batch: old rows get padded
    assert torch.equal(rows.add([wide]), CachedLM(int4.model).forward(wide))
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
