"""--logprobs, --logprobs-mode, --show-probs and --show-alternatives at the command line."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
from helpers import run
from rich.console import Console

from llmgen.cli.probs_view import ProbsRenderer, band_style
from llmgen.decoding.logprobs import TokenLogprob
from llmgen.decoding.sequence import SequenceResult


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def check_entries(row: dict, top: int) -> None:
    assert [e["id"] for e in row["logprobs"]] == row["token_ids"]
    for entry in row["logprobs"]:
        assert set(entry) == {"id", "token", "logprob", "top_logprobs"}
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == top
        values = [t["logprob"] for t in entry["top_logprobs"]]
        assert values == sorted(values, reverse=True)


def test_generate_json_rows_gain_logprobs(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--seed", "1", "-N", "8", "--json",
                       "--logprobs", "3", "abc")
    assert code == 0
    check_entries(rows(out)[0], 3)
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--seed", "1", "-N", "8", "--json", "abc")
    assert "logprobs" not in rows(out)[0]


def test_logprobs_zero_gives_the_chosen_token_only(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--greedy", "-N", "5", "--json",
                       "--logprobs", "0", "abc")
    assert code == 0
    check_entries(rows(out)[0], 0)


def test_batched_samples_and_input_rows(capsys, char_model, tmp_path) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--seed", "2", "-N", "6", "--json",
                       "-n", "3", "--logprobs", "2", "--logprobs-mode", "processed", "--top-k", "4", "abc")
    assert code == 0 and len(rows(out)) == 3
    for row in rows(out):
        assert [e["id"] for e in row["logprobs"]] == row["token_ids"]
        assert all(len(e["top_logprobs"]) == 2 for e in row["logprobs"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("abc\nhab\n")
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--greedy", "-N", "4", "--json",
                       "--input", str(prompts), "--logprobs", "1")
    assert code == 0
    for row in rows(out):
        check_entries(row, 1)


def test_beam_rows_logprobs_add_up_to_the_score(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "-N", "8", "--json", "--num-beams", "3",
                       "-n", "3", "--length-penalty", "0.7", "--logprobs", "2", "abc")
    assert code == 0
    for row in rows(out):
        total = sum(e["logprob"] for e in row["logprobs"])
        assert total / len(row["token_ids"]) ** 0.7 == pytest.approx(row["score"], abs=1e-4)


def test_speculate_reports_plain_decodings_logprobs(capsys, char_model, draft_model) -> None:
    args = ("-m", str(char_model), "--raw", "--greedy", "-N", "12", "--ignore-eos", "--json", "--logprobs", "3")
    _, plain, _ = run(capsys, "generate", *args, "abc abc ab")
    for draft in ("ngram", str(draft_model)):
        code, out, _ = run(capsys, "speculate", "-d", draft, "--ngram-min", "1", "-g", "3", *args, "abc abc ab")
        assert code == 0
        got, expected = rows(out)[0], rows(plain)[0]
        assert got["token_ids"] == expected["token_ids"]
        for a, b in zip(got["logprobs"], expected["logprobs"]):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
            assert [t["id"] for t in a["top_logprobs"]] == [t["id"] for t in b["top_logprobs"]]


@pytest.mark.parametrize(("argv", "needle"), [
    (("generate", "--logprobs", "21"), "--logprobs must be an integer from 0 to 20"),
    (("generate", "--logprobs", "-1"), "--logprobs must be an integer from 0 to 20"),
    (("speculate", "-d", "ngram", "--logprobs", "99"), "--logprobs must be an integer from 0 to 20"),
    (("generate", "--logprobs", "2", "--logprobs-mode", "softmax"), "--logprobs-mode must be 'raw' or 'processed'"),
    (("generate", "--logprobs-mode", "raw"), "--logprobs-mode needs --logprobs N"),
    (("generate", "--num-beams", "2", "--show-probs"), "beam search does not stream"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle) -> None:
    code, out, err = run(capsys, *argv, "-m", "/nonexistent/model", "abc")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmgen: error: ") and needle in lines[0], err


def test_show_probs_is_plain_in_a_pipe(capsys, char_model) -> None:
    args = ("generate", "-m", str(char_model), "--raw", "--seed", "3", "-N", "10", "-q", "abc")
    _, plain, _ = run(capsys, *args)
    code, shown, err = run(capsys, *args, "--show-probs", "--show-alternatives")
    assert code == 0 and shown == plain and "\x1b[" not in shown + err


class FakeTokenizer:
    def decode(self, ids: list[int]) -> str:
        return {1: "the", 2: " a", 3: "\n"}.get(ids[0], "?")


def render(monkeypatch, no_color: bool) -> tuple[str, str]:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    renderer = ProbsRenderer(True, FakeTokenizer(), "processed", alternatives=True)
    out, err = io.StringIO(), io.StringIO()
    renderer.out = Console(file=out, force_terminal=True, color_system="standard", highlight=False)
    renderer.err = Console(file=err, force_terminal=True, color_system="standard", highlight=False)
    renderer.begin(0, 1)
    renderer.text("the", "target", TokenLogprob(1, math.log(0.95), ((1, math.log(0.95)),)))
    renderer.text(" a", "target", TokenLogprob(2, math.log(0.1), ((3, math.log(0.6)), (2, math.log(0.1)))))
    renderer.end(SequenceResult("the a", [1, 2], [0], "length"))
    return out.getvalue(), err.getvalue()


def test_terminal_view_colours_by_band_with_a_legend_and_a_table(monkeypatch) -> None:
    out, err = render(monkeypatch, no_color=False)
    assert "p ≥ 0.9" in err and "< 0.2" in err  # the legend
    assert "\x1b[31m a" in out  # p = 0.1: the lowest band, red
    assert "uncertain tokens" in out and '"\\n" 0.60' in out  # the alternative to " a"
    assert band_style(0.95) == "" and band_style(0.7) == "cyan" and band_style(0.3) == "yellow"


def test_no_color_keeps_the_text_and_table_and_drops_colour_and_legend(monkeypatch) -> None:
    out, err = render(monkeypatch, no_color=True)
    assert not re.search(r"\x1b\[3[0-7]m", out) and err == ""  # no foreground colour (italic is fine)
    assert out.startswith("the a\n") and "uncertain tokens" in out
