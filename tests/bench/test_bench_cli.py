"""`llmgen bench` end to end on the tiny character model, in-process: tables, --json fields, the plot,
and clear errors for bad arguments. One run per configuration and few tokens: no timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmgen.bench import contenders
from llmgen.cli import main

ROW_FIELDS = {"prompt_set", "label", "strategy", "engine", "gamma", "draft", "twin", "settings",
              "decode_tokens_per_second", "ttft_seconds", "prefill_tokens_per_second", "peak_memory_bytes",
              "generated_tokens", "ratio_to_plain", "ratio_to_hf", "acceptance_rate", "tokens_per_target_forward",
              "predicted_speedup", "measured_speedup", "same_tokens_as_twin", "quality", "note", "runs"}
SUMMARY_FIELDS = {"median", "min", "max", "n"}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "char.txt"
    path.write_text("abc\nhead bed\n", encoding="utf-8")  # only characters of the tiny vocabulary
    return path


def bench(char_model: Path, prompt_file: Path, *args: str) -> list[str]:
    return ["bench", "--model", str(char_model), "--prompts", str(prompt_file), "--runs", "1",
            "--max-new-tokens", "8", "--quiet", *args]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_plain_with_hf_baseline_and_roofline(char_model: Path, prompt_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, bench(char_model, prompt_file, "-s", "plain,penalties", "--baseline", "hf",
                                  "--roofline", "--roofline-mb", "16", "--json"))
    assert {"date", "machine", "model", "settings", "plan", "rows", "roofline", "peak_rss_bytes"} <= set(data)
    assert data["settings"]["temperature"] == 0.0 and data["settings"]["max_new_tokens"] == 8  # bench defaults
    labels = [row["label"] for row in data["rows"]]
    assert labels == ["plain", "HF generate", "penalties F=0.5 P=0.5"]
    for row in data["rows"]:
        assert ROW_FIELDS <= set(row)
        assert len(row["runs"]) == 1
        assert SUMMARY_FIELDS <= set(row["decode_tokens_per_second"])
        assert SUMMARY_FIELDS <= set(row["ttft_seconds"])
        assert row["peak_memory_bytes"]["median"] > 0
        assert set(row["quality"]) == {"distinct_2", "distinct_3", "repeated_3gram_rate"}
    plain, hf, penalized = data["rows"]
    assert plain["ratio_to_plain"] == 1.0 and plain["ratio_to_hf"] is not None
    assert hf["engine"] == "hf" and hf["twin"] == "plain"
    assert plain["same_tokens_as_twin"] == "1/1"  # greedy llmgen equals greedy HF
    assert penalized["settings"]["frequency_penalty"] == 0.5
    roofline = data["roofline"]
    assert roofline["ceiling_tokens_per_second"] > 0 and 0 < roofline["fraction_of_ceiling"]
    assert roofline["weight_bytes_per_token"] > 0


def test_markdown_table_when_not_a_terminal(char_model: Path, prompt_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(bench(char_model, prompt_file, "-s", "plain", "--warmup", "0")) == 0
    out = capsys.readouterr().out
    assert "| prompts | strategy | decode tok/s" in out
    assert "| char | plain |" in out


@pytest.mark.skipif(contenders.available("ngram") is not None, reason="llmgen.decoding.speculative is not installed")
def test_speculative_rows_with_gamma_sweep(char_model: Path, draft_model: Path, prompt_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, bench(char_model, prompt_file, "-s", "plain,ngram,draft", "--draft", str(draft_model),
                                  "--gamma", "1,3", "--gamma", "auto", "--json"))
    labels = [row["label"] for row in data["rows"]]
    assert labels[0] == "plain"
    assert [l for l in labels if l.startswith("ngram")] == ["ngram γ=1", "ngram γ=3", "ngram γ=auto"]
    drafts = [row for row in data["rows"] if row["strategy"] == "draft"]
    assert [row["gamma"] for row in drafts] == [1, 3, "auto"]
    for row in drafts:
        assert row["acceptance_rate"] is not None and row["tokens_per_target_forward"] is not None
        assert row["measured_speedup"] is not None
    assert drafts[0]["predicted_speedup"] is not None  # fixed γ: predicted from α, c and v
    assert drafts[2]["predicted_speedup"] is None  # γ=auto varies: no prediction
    assert data["calibration"]["drafts"][str(draft_model)]["c"] > 0


@pytest.mark.skipif(contenders.available("beam") is not None, reason="llmgen.decoding.beam is not installed")
def test_beam_row_with_hf_twin(char_model: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, bench(char_model, prompt_file, "-s", "beam", "--num-beams", "2", "--baseline", "hf",
                                  "--warmup", "0", "--json"))
    labels = [row["label"] for row in data["rows"]]
    assert labels == ["beam B=2", "HF beam B=2"]
    assert data["rows"][0]["ttft_seconds"] is None  # beam rows are end to end
    assert data["rows"][0]["ratio_to_hf"] is not None


def test_plot_is_a_png(char_model: Path, prompt_file: Path, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "bench.png"
    assert main(bench(char_model, prompt_file, "-s", "plain", "--warmup", "0", "--plot", str(target))) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(char_model: Path, prompt_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ModuleNotFoundError
    code = main(bench(char_model, prompt_file, "--plot", str(tmp_path / "x.png")))
    assert code == 2
    assert "pip install 'llmgen[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "--runs must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--gamma", "0"], "--gamma: 0 must be >= 1"),
    (["--gamma", "fast"], "--gamma: 'fast' is not an integer or 'auto'"),
    (["-s", "turbo"], "unknown strategy 'turbo'"),
    (["--baseline", "vllm"], "--baseline: 'vllm' must be none, hf, llamacpp or hf,llamacpp"),
    (["--plot", "out.jpg"], "must end in .png"),
    (["-n", "2"], "-n: bench generates one sequence per run"),
    (["--temperature", "-1"], "temperature"),
    (["-s", "beam", "--num-beams", "1"], "--num-beams must be >= 2"),
])
def test_bad_arguments(char_model: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str],
                       args: list[str], message: str) -> None:
    code = main(bench(char_model, prompt_file, *args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_prompt_file_and_model(char_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(char_model), "--prompts", "/no/such/file.txt", "--quiet"]) == 2
    assert "neither a built-in set" in capsys.readouterr().err
    assert main(["bench", "--model", "/no/such/model", "--quiet", "-s", "plain"]) == 1
    assert "model" in capsys.readouterr().err


def test_rich_table_on_a_terminal(char_model: Path, prompt_file: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(bench(char_model, prompt_file, "-s", "plain", "--warmup", "0", "--roofline", "--roofline-mb", "8")) == 0
    out = capsys.readouterr().out
    assert "llmgen bench" in out and "decode tok/s" in out and "roofline" in out
