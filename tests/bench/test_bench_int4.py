"""`llmgen bench` with the 4-bit path: the `int4` strategy beside plain, an int4 target, and the
llama.cpp baseline (a stand-in module here; the real one when the extra is installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import helpers
import pytest

from llmgen.bench import contenders


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "char.txt"
    path.write_text("abc\nhead bed\n", encoding="utf-8")
    return path


def bench(model: str, prompt_file: Path, *args: str) -> list[str]:
    return ["bench", "--model", model, "--prompts", str(prompt_file), "--runs", "1", "--warmup", "0",
            "--max-new-tokens", "6", "--quiet", "--json", *args]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    return helpers.run(capsys, *argv)


def test_int4_strategy_is_measured_against_plain(char_model: Path, prompt_file: Path, capsys) -> None:
    code, out, err = run(capsys, bench(str(char_model), prompt_file, "-s", "plain,int4", "--baseline", "hf"))
    assert code == 0, err
    rows = {row["label"]: row for row in json.loads(out)["rows"]}
    assert list(rows) == ["plain", "HF generate", "plain int4"]
    int4 = rows["plain int4"]
    assert int4["strategy"] == "int4" and int4["engine"] == "llmgen" and int4["ratio_to_plain"] is not None
    assert int4["ratio_to_hf"] is None  # HF generate() has no twin for llmgen's int4 path
    assert 0 < int4["kl_vs_float"] < 1 and rows["plain"]["kl_vs_float"] is None  # KL on the corpus (evaluate/)


def test_an_int4_target_skips_what_it_cannot_run(char_model: Path, prompt_file: Path, capsys) -> None:
    code, out, err = run(capsys, bench(str(char_model), prompt_file, "--quant", "int4", "-s", "plain",
                                       "--baseline", "hf"))
    assert code == 0, err
    data = json.loads(out)
    assert data["model"]["quant"] == "int4"
    assert [row["label"] for row in data["rows"]] == ["plain"]  # no HF twin of an int4 model
    code, _, err = run(capsys, bench(str(char_model), prompt_file, "--quant", "int4", "-s", "plain,int4"))
    assert code == 2 and "the target is already int4" in err
    code, out, err = run(capsys, bench(str(char_model), prompt_file, "--quant", "int4", "-s", "plain,beam"))
    assert code == 0, err  # beams run on the engine's rows, int4 included
    assert [row["label"] for row in json.loads(out)["rows"]] == ["plain", "beam B=4"]
    code, _, err = run(capsys, bench(str(char_model), prompt_file, "--quant", "int4", "--roofline"))
    assert code == 2 and "--roofline measures the float path" in err


def test_llamacpp_baseline_without_the_extra_says_how_to_install(monkeypatch, char_model: Path, prompt_file: Path,
                                                                 capsys) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else object())
    code, _, err = run(capsys, bench(str(char_model), prompt_file, "-s", "plain", "--baseline", "llamacpp"))
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "llmgen[llamacpp]" in lines[0]


def test_llamacpp_baseline_needs_a_gguf_and_greedy(char_model: Path, prompt_file: Path, capsys) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    code, _, err = run(capsys, bench(str(char_model), prompt_file, "-s", "plain", "--baseline", "llamacpp"))
    assert code == 2 and "not a GGUF file" in err


def test_bad_baseline_is_a_usage_error(char_model: Path, prompt_file: Path, capsys) -> None:
    code, _, err = run(capsys, bench(str(char_model), prompt_file, "--baseline", "vllm"))
    assert code == 2 and "--baseline" in err


class FakeLlama:
    """Stands in for llama_cpp.Llama: yields a fixed greedy continuation, records how it was called."""

    calls: list[dict] = []

    def __init__(self, model_path: str, **kwargs) -> None:
        self.model_path = model_path
        FakeLlama.calls.append({"model_path": model_path, **kwargs})

    def generate(self, tokens, **kwargs):
        FakeLlama.calls.append({"prompt": list(tokens), **kwargs})
        yield from [28, 29, 30, 31, 32, 33, 34, 35]


def test_llamacpp_row_runs_the_same_gguf_greedy(monkeypatch, embedded, prompt_file: Path, capsys) -> None:
    fake = types.ModuleType("llama_cpp")
    fake.Llama = FakeLlama
    fake.__version__ = "fake"
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    monkeypatch.setattr(contenders.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "llama_cpp" else importlib.util.find_spec(name))
    FakeLlama.calls.clear()
    code, out, err = run(capsys, bench("smollm2-135m", prompt_file, "-s", "plain,int4", "--baseline", "llamacpp"))
    assert code == 0, err
    rows = {row["label"]: row for row in json.loads(out)["rows"]}
    assert list(rows) == ["plain", "plain int4", "llama.cpp (same GGUF)"]
    llama = rows["llama.cpp (same GGUF)"]
    assert llama["engine"] == "llamacpp" and llama["twin"] == "plain int4"
    assert rows["plain int4"]["ratio_to_llamacpp"] is not None
    assert llama["runs"][0]["generated_tokens"] == 6  # cut at --max-new-tokens
    init, call = FakeLlama.calls[0], FakeLlama.calls[1]
    assert init["model_path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert call["temp"] == 0.0 and call["top_k"] == 1 and call["repeat_penalty"] == 1.0 and call["reset"] is True


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_real_llamacpp_row(embedded, prompt_file: Path, capsys) -> None:
    code, out, err = run(capsys, bench("smollm2-135m", prompt_file, "-s", "int4", "--baseline", "llamacpp"))
    assert code == 0, err
    rows = {row["label"]: row for row in json.loads(out)["rows"]}
    llama = rows["llama.cpp (same GGUF)"]
    assert llama["runs"][0]["generated_tokens"] >= 1
    assert rows["plain int4"]["ratio_to_llamacpp"] is not None
