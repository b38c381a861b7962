"""`llmgen speculate`, run in-process: output, statistics, trace, and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("llmgen: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


GREEDY = ("--raw", "--greedy", "--ignore-eos", "-N", "20")


@pytest.mark.parametrize("draft", ["model", "ngram"])
def test_greedy_output_equals_generate(capsys, char_model: Path, draft_model: Path, draft: str) -> None:
    code, plain, _ = run(capsys, "generate", "-m", str(char_model), *GREEDY, "--json", "abc ab")
    assert code == 0
    ref = str(draft_model) if draft == "model" else "ngram"
    code, out, _ = run(capsys, "speculate", "-m", str(char_model), "-d", ref, "-g", "3", "--ngram-min", "1",
                       *GREEDY, "--json", "abc ab")
    assert code == 0
    result, expected = json.loads(out), json.loads(plain)
    assert result["token_ids"] == expected["token_ids"]
    stats = result["stats"]
    for key in ("target_forwards", "draft_tokens", "accepted_tokens", "acceptance_rate", "tokens_per_target_forward",
                "expected_tokens_per_forward", "acceptance_histogram", "tokens_per_second"):
        assert key in stats


def test_plain_text_and_statistics_line(capsys, char_model: Path, draft_model: Path) -> None:
    code, out, err = run(capsys, "speculate", "-m", str(char_model), "-d", str(draft_model), *GREEDY, "abc")
    assert code == 0
    assert out.strip() and "\x1b[" not in out  # piped: plain text, no colours
    assert "target forwards" in err and "acceptance rate" in err and "accepted per round" in err


def test_trace_and_compare(capsys, tmp_path: Path, char_model: Path, draft_model: Path) -> None:
    trace = tmp_path / "rounds.jsonl"
    code, out, _ = run(capsys, "speculate", "-m", str(char_model), "-d", str(draft_model), "-g", "auto",
                       "--seed", "3", "-t", "0.9", "-N", "16", "--ignore-eos", "--raw", "-n", "2", "--json",
                       "--compare", "--trace", str(trace), "abc")
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == 2
    assert all(r["stats"]["speedup"] is None or r["stats"]["speedup"] > 0 for r in results)
    assert all("baseline_tokens_per_second" in r["stats"] for r in results)
    rounds = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {r["sequence"] for r in rounds} == {0, 1}
    for r in rounds:
        assert len(r["proposed"]) == len(r["p"]) == len(r["q"]) == len(r["accepted"])
        assert r["accepted"] == [i < r["accepted_count"] for i in range(len(r["proposed"]))]
        assert ("replacement" in r) == (r["accepted_count"] < len(r["proposed"]))
    for index, result in enumerate(results):
        produced = [t for r in rounds if r["sequence"] == index
                    for t in [*r["proposed"][:r["accepted_count"]],
                              r.get("replacement", r.get("bonus", r.get("target")))]]
        assert produced[:len(result["token_ids"])] == result["token_ids"]


def test_a_draft_with_another_vocabulary_gives_generates_output(capsys, char_model: Path, wide_model: Path) -> None:
    code, plain, _ = run(capsys, "generate", "-m", str(char_model), *GREEDY, "--json", "abc ab")
    assert code == 0
    code, out, _ = run(capsys, "speculate", "-m", str(char_model), "-d", str(wide_model), "-g", "2", *GREEDY,
                       "--json", "abc ab")
    assert code == 0
    result = json.loads(out)
    assert result["token_ids"] == json.loads(plain)["token_ids"]
    assert result["stats"]["draft_tokens"] > 0


@pytest.mark.parametrize("gamma", ["0", "-1", "many"])
def test_gamma_below_one_or_not_a_number(capsys, char_model: Path, gamma: str) -> None:
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "-d", "ngram", "-g", gamma, "--raw", "ab")
    assert code == 2
    assert_one_line_error(err, "--gamma")


def test_missing_draft_model(capsys, char_model: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "-d", str(tmp_path / "nope.gguf"), "--raw", "ab")
    assert code == 1
    assert_one_line_error(err, "--draft", "nope.gguf")


def test_draft_is_required(capsys, char_model: Path) -> None:
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "--raw", "ab")
    assert code == 2
    assert_one_line_error(err, "--draft")


def test_bad_ngram_bounds(capsys, char_model: Path) -> None:
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "-d", "ngram", "--ngram-min", "3",
                       "--ngram-max", "2", "--raw", "ab")
    assert code == 2
    assert_one_line_error(err, "--ngram-min")


def test_beam_search_is_refused(capsys, char_model: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "-d", "ngram", "--num-beams", "3", "ab")
    assert code == 2
    assert_one_line_error(err, "--num-beams")
    preset = tmp_path / "beams.toml"
    preset.write_text("num_beams = 3\n")
    code, _, err = run(capsys, "speculate", "-m", str(char_model), "-d", "ngram", "-p", str(preset), "ab")
    assert code == 2
    assert_one_line_error(err, "beam search")


def test_dump_config_names_the_draft(capsys) -> None:
    code, out, _ = run(capsys, "speculate", "-d", "small", "-g", "auto", "--top-p", "0.9", "--dump-config")
    assert code == 0
    assert 'draft = "small"' in out and 'gamma = "auto"' in out and "top_p = 0.9  # flag" in out


def test_row_i_of_n_draws_from_its_own_stream(capsys, char_model: Path, draft_model: Path) -> None:
    """`-n` means the same in every command: sequence i of `speculate -n 2 --seed S` is what `-n 1` gives
    with row i's seed (`batch.row_seed(S, i)`), as for `generate -n`. (A fixed gamma: `auto` follows timings.)"""
    from llmgen.decoding.batch import row_seed

    args = ["speculate", "-m", str(char_model), "-d", str(draft_model), "-g", "3", "-t", "1.0", "-N", "12", "--ignore-eos",
            "--raw", "--json"]
    code, out, err = run(capsys, *args, "--seed", "5", "-n", "2", "abc")
    assert code == 0, err
    both = [json.loads(line)["token_ids"] for line in out.splitlines()]
    for index in (0, 1):
        code, out, err = run(capsys, *args, "--seed", str(row_seed(5, index)), "abc")
        assert code == 0, err
        assert json.loads(out)["token_ids"] == both[index]
    assert both[0] != both[1]
