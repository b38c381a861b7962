"""`llmgen bench --batch-sizes`: the batch-size sweep against HF generate() (float) or alone (int4)."""

from __future__ import annotations

import json
from pathlib import Path

from llmgen.cli import main


def test_batch_sweep_against_hf(capsys, char_model: Path) -> None:
    assert main(["bench", "-m", str(char_model), "--batch-sizes", "1,4", "--runs", "1", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["sections"]["sweep"]
    assert list(rows) == ["1", "4"]
    for row in rows.values():
        assert row["tokens_per_second"]["llmgen"] > 0 and row["tokens_per_second"]["HF"] > 0
        assert row["ratio"] is not None and set(row["mean_row_latency_seconds"]) == {"llmgen", "HF"}


def test_batch_sweep_of_an_int4_model_runs_llmgen_alone(capsys, char_model: Path) -> None:
    assert main(["bench", "-m", str(char_model), "--quant", "int4", "--batch-sizes", "2", "--runs", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "| — | — |" in out  # no HF columns for llmgen's int4 path


def test_bad_batch_sizes_are_one_line(capsys, char_model: Path) -> None:
    assert main(["bench", "-m", str(char_model), "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
    assert main(["bench", "-m", str(char_model), "--batch-sizes", "0"]) == 2
