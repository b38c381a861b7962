"""`llmgen bench -s cross`: a --draft with another vocabulary than the target's, beside `draft` (one run,
few tokens: no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmgen.cli import main


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "char.txt"
    path.write_text("abc\nhead bed\n", encoding="utf-8")
    return path


def bench(char_model: Path, prompt_file: Path, *args: str) -> list[str]:
    return ["bench", "--model", str(char_model), "--prompts", str(prompt_file), "--runs", "1",
            "--max-new-tokens", "8", "--quiet", *args]


def test_cross_rows_beside_draft_rows(char_model: Path, draft_model: Path, wide_model: Path, prompt_file: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = bench(char_model, prompt_file, "-s", "plain,draft,cross", "--draft", str(draft_model), "--draft",
                 str(wide_model), "--gamma", "2", "--json")
    assert main(argv) == 0, capsys.readouterr().err
    data = json.loads(capsys.readouterr().out)
    by_strategy = {row["strategy"]: row for row in data["rows"]}
    assert set(by_strategy) == {"plain", "draft", "cross"}
    assert by_strategy["draft"]["draft"] == str(draft_model)  # the draft sharing the vocabulary
    assert by_strategy["cross"]["draft"] == str(wide_model)  # the one with another
    assert by_strategy["cross"]["label"] == f"cross {wide_model} γ=2"
    assert by_strategy["cross"]["acceptance_rate"] is not None
    assert list(data["calibration"]["drafts"]) == [str(draft_model)]  # costs of the shared-vocabulary draft only


@pytest.mark.parametrize("args,code,message", [
    (["-s", "cross"], 2, "--strategies cross: no --draft given"),
    (["-s", "cross", "--draft", "DRAFT"], 1, "shares the target's vocabulary"),
    (["-s", "draft", "--draft", "WIDE"], 1, "--strategies cross measures such a draft"),
])
def test_a_draft_for_the_other_strategy_is_refused_in_one_line(char_model: Path, draft_model: Path, wide_model: Path,
                                                               prompt_file: Path, capsys: pytest.CaptureFixture[str],
                                                               args: list[str], code: int, message: str) -> None:
    args = [{"DRAFT": str(draft_model), "WIDE": str(wide_model)}.get(a, a) for a in args]
    assert main(bench(char_model, prompt_file, *args)) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
