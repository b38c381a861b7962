"""`speculate --draft suffix`, `--draft-cache FILE` and `--build-draft-cache CORPUS` on both engines (the tiny
GGUF of `tiny_gguf.py`): greedy output equals `generate --greedy`; the cache is written, read back, and a
file for another tokenizer or a damaged one is ignored with one line; misuse is refused in one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import one_line_error, run
from tiny_gguf import write_tiny_llama

from llmgen.decoding.speculative.proposers import SuffixStore, lookup_cache

ENGINES = ["torch", pytest.param("llamacpp", marks=pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="the llamacpp extra is not installed"))]
PROMPT = "ab ba ab ba ab"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("suffix-cli") / "tiny.gguf", seed=1)


def texts(out: str) -> list[str]:
    return [json.loads(line)["text"] for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_suffix_with_a_cache_equals_generate(capfd, model: Path, tmp_path: Path, engine: str) -> None:
    common = ["-m", str(model), "--engine", engine, "--threads", "1", "--greedy", "-N", "12", "--ignore-eos", "--json"]
    code, out, err = run(capfd, "generate", *common, PROMPT)
    assert code == 0, err
    expected = texts(out)
    cache = tmp_path / "draft.sfx"
    for _ in range(2):  # the first run writes the cache, the second reads it
        code, out, err = run(capfd, "speculate", *common, "-d", "suffix", "-n", "2", "--draft-cache", str(cache), PROMPT)
        assert code == 0, err
        assert "llmgen:" not in err  # no note: a missing file is a first run, the written one fits
        assert texts(out) == expected * 2
        assert cache.stat().st_size > 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ab ba ab ba ab ab\n\nba ba ab\n")
    code, out, err = run(capfd, "speculate", "-m", str(model), "--engine", engine, "--threads", "1",
                         "--build-draft-cache", str(corpus), "--draft-cache", str(cache))
    assert code == 0 and "2 paragraphs" in err, err
    code, out, err = run(capfd, "speculate", *common, "-d", "suffix", "--draft-cache", str(cache), PROMPT)
    assert code == 0 and texts(out) == expected, err


@pytest.mark.parametrize("engine", ENGINES)
def test_every_sampling_option_runs_with_the_suffix_draft(capfd, model: Path, engine: str) -> None:
    code, out, err = run(capfd, "speculate", "-m", str(model), "--engine", engine, "--threads", "1", "-d", "suffix",
                         "--seed", "3", "-N", "8", "--temperature", "0.9", "--top-k", "8", "--top-p", "0.95",
                         "--min-p", "0.02", "--presence-penalty", "0.5", "--frequency-penalty", "0.3",
                         "--repetition-penalty", "1.2", "-n", "3", PROMPT)
    assert code == 0, err


@pytest.mark.parametrize("case", ["tokenizer", "damaged"])
def test_a_cache_that_does_not_fit_is_ignored_in_one_line(capfd, model: Path, tmp_path: Path, case: str) -> None:
    cache = tmp_path / "other.sfx"
    store = SuffixStore()
    store.add([1, 2, 3])
    lookup_cache.save(cache, store, "another vocabulary", 12)
    if case == "damaged":
        cache.write_bytes(cache.read_bytes()[:30])  # cut inside the header
    code, out, err = run(capfd, "speculate", "-m", str(model), "--engine", "torch", "-d", "suffix", "--greedy",
                         "-N", "4", "--quiet", "--draft-cache", str(cache), PROMPT)
    assert code == 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "ignored" in lines[0], err
    assert ("another tokenizer" if case == "tokenizer" else "damaged") in lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["-d", "ngram", "--draft-cache", "x.sfx", PROMPT], "--draft suffix"),
    (["--build-draft-cache", "corpus.txt"], "--draft-cache FILE"),
    (["--build-draft-cache", "missing.txt", "--draft-cache", "x.sfx"], "cannot read"),
])
def test_misuse_is_refused_in_one_line(capfd, model: Path, tmp_path: Path, monkeypatch, argv: list[str],
                                       needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capfd, "speculate", "-m", str(model), *argv)
    assert code == 2
    one_line_error(err, needle)
