"""The llama.cpp engine from the command line: choosing it, every decoding front-end on it, and bad input.

Runs the CLI in-process on the tiny GGUF of `tiny_gguf.py` (and the embedded file where the real vocabulary
matters). Bad input gets one line on stderr and a nonzero exit, and llama.cpp writes nothing of its own:
`capfd` sees the file descriptors, where llama.cpp's C code would print.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from tiny_gguf import write_tiny_llama  # noqa: E402

from llmgen.cli import main  # noqa: E402
from llmgen.decoding.chat import reference_reply  # noqa: E402
from llmgen.decoding.config import DecodingConfig  # noqa: E402
from llmgen.loading import models  # noqa: E402

ON = ("--engine", "llamacpp", "--threads", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-gguf-cli")
    write_tiny_llama(directory / "draft.gguf", seed=1, noise=0.1, noise_seed=2)
    return write_tiny_llama(directory / "tiny.gguf", seed=1)


def run(capfd, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    code = main(list(argv))
    out, err = capfd.readouterr()
    return code, out, err


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("llmgen: error: "), err
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def dumped(out: str) -> dict[str, str]:
    return {line.split(" = ")[0]: line.split(" = ")[1] for line in out.splitlines() if " = " in line}


def test_auto_runs_a_gguf_on_llama_cpp_and_anything_else_on_torch(capfd, monkeypatch, tiny: Path, char_model) -> None:
    monkeypatch.delenv("LLMGEN_ENGINE", raising=False)
    code, out, _ = run(capfd, "generate", "-m", str(tiny), "--dump-config", "x")
    assert code == 0 and dumped(out)["engine"].startswith('"llamacpp"  # auto')
    assert dumped(run(capfd, "generate", "-m", str(char_model), "--dump-config", "x")[1])["engine"].startswith('"torch"')
    assert dumped(run(capfd, "generate", "-m", str(tiny), "--quant", "int4", "--dump-config", "x")[1])["engine"] \
        .startswith('"torch"')  # --quant asks for a torch path
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else object())
    assert dumped(run(capfd, "generate", "-m", str(tiny), "--dump-config", "x")[1])["engine"].startswith('"torch"')


def test_threads_from_the_flag_a_preset_or_the_cores(capfd, tiny: Path, tmp_path: Path) -> None:
    preset = tmp_path / "one.toml"
    preset.write_text("temperature = 0.5\nthreads = 3\n")
    assert dumped(run(capfd, "generate", "-m", str(tiny), "--preset", str(preset), "--dump-config", "x")[1])[
        "threads"] == "3  # preset one"
    assert dumped(run(capfd, "generate", "-m", str(tiny), "--preset", str(preset), "--threads", "2", "--dump-config",
                      "x")[1])["threads"] == "2  # flag"
    assert dumped(run(capfd, "generate", "-m", str(tiny), "--dump-config", "x")[1])["threads"] == \
        f"{models.physical_cores()}  # default"
    code, out, err = run(capfd, "speculate", "-m", str(tiny), "-d", str(tiny), "--draft-engine", "torch",
                         "--dump-config", "x")
    assert code == 0 and dumped(out)["draft_engine"].startswith('"torch"  # flag')


def test_generate_n_and_input_run_on_llama_cpp_rows(capfd, tiny: Path, tmp_path: Path) -> None:
    code, out, err = run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "8", "--ignore-eos",
                         "--json", "hello")
    assert code == 0, err
    [single] = rows(out)
    assert single["stats"]["engine"] == "llamacpp" and len(single["token_ids"]) == 8
    code, out, err = run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "8", "--ignore-eos",
                         "-n", "3", "--json", "hello")
    assert code == 0, err
    assert [r["token_ids"] for r in rows(out)] == [single["token_ids"]] * 3
    assert {r["stats"]["engine"] for r in rows(out)} == {"llamacpp"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\nabc\nhello there\nxyz\n")
    code, out, err = run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "8", "--ignore-eos",
                         "--input", str(prompts), "--batch-size", "2", "--json")
    assert code == 0, err
    got = rows(out)
    assert len(got) == 4 and got[0]["token_ids"] == single["token_ids"]  # row 0 is the same prompt
    assert {r["stats"]["engine"] for r in got} == {"llamacpp"}


def test_chat_reuses_the_llama_cpp_cache_between_turns(capfd, monkeypatch, tiny: Path) -> None:
    code, out, err = run(capfd, "chat", "-m", str(tiny), *ON, "--greedy", "-N", "6", "--json", stdin="abc\nbad\n",
                         monkeypatch=monkeypatch)
    assert code == 0, err
    got = rows(out)
    assert got[1]["stats"]["cached_tokens"] > 0
    loaded = models.load(str(tiny), engine="llamacpp", threads=1)
    messages = []
    for row, text in zip(got, ["abc", "bad"]):
        messages.append({"role": "user", "content": text})
        assert row["content"] == reference_reply(loaded, messages, DecodingConfig(temperature=0.0, max_new_tokens=6)).text
        messages.append({"role": "assistant", "content": row["content"]})


def test_speculate_with_target_and_draft_on_either_engine(capfd, tiny: Path) -> None:
    draft = tiny.parent / "draft.gguf"
    plain = rows(run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "16", "--ignore-eos",
                     "--json", "hello")[1])[0]["token_ids"]
    for extra in (["-d", "ngram"], ["-d", str(draft)], ["-d", str(draft), "--draft-engine", "llamacpp"]):
        code, out, err = run(capfd, "speculate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "16", "--ignore-eos",
                             "--json", *extra, "hello")
        assert code == 0, err
        assert rows(out)[0]["token_ids"] == plain, extra


def test_a_torch_target_with_the_small_draft_on_llama_cpp(capfd, embedded_dir) -> None:
    """The embedded model on torch (float32), `small` on llama.cpp (the same file's Q4_1): the same vocabulary."""
    code, out, err = run(capfd, "speculate", "--engine", "torch", "--draft-engine", "llamacpp", "--threads", "1",
                         "-d", "small", "--greedy", "-N", "12", "--json", "Name a colour.")
    assert code == 0, err
    plain = rows(run(capfd, "generate", "--engine", "torch", "--threads", "1", "--greedy", "-N", "12", "--json",
                     "Name a colour.")[1])[0]
    assert rows(out)[0]["token_ids"] == plain["token_ids"]


def test_a_draft_with_another_vocabulary_drafts_across_tokenizers(capfd, tiny: Path) -> None:
    """`small` (SmolLM2's vocabulary) for the tiny GGUF (its own): once refused, now a cross-tokenizer draft
    (`proposers/cross.py`) whose greedy output is the plain greedy output."""
    code, want, err = run(capfd, "generate", "-m", str(tiny), *ON, "--greedy", "-N", "12", "--raw", "hello")
    assert code == 0, err
    code, got, err = run(capfd, "speculate", "-m", str(tiny), *ON, "-d", "small", "--draft-engine", "llamacpp",
                         "--greedy", "-N", "12", "--raw", "hello")
    assert code == 0 and "Traceback" not in err, err
    assert got == want


def test_bad_input_gets_one_line_and_no_llama_cpp_output(capfd, monkeypatch, tiny: Path, char_model,
                                                        tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(tiny.read_bytes()[:5000])
    one_line_error(*run(capfd, "generate", "-m", str(corrupt), *ON, "hi")[::2], "corrupt.gguf")
    alien = write_tiny_llama(tmp_path / "alien.gguf", seed=1)
    data = alien.read_bytes().replace(b"llama", b"frobn", 1)  # general.architecture = "frobn"
    alien.write_bytes(data)
    one_line_error(*run(capfd, "generate", "-m", str(alien), *ON, "hi")[::2], "llama.cpp", "frobn")
    one_line_error(*run(capfd, "generate", "-m", str(char_model), *ON, "hi")[::2], "GGUF", "--engine torch")
    one_line_error(*run(capfd, "generate", "-m", str(tiny), *ON, "--quant", "int4", "hi")[::2], "--quant int4")
    one_line_error(*run(capfd, "generate", "-m", str(tiny), "--threads", "0", "hi")[::2], "--threads")
    one_line_error(*run(capfd, "generate", "-m", str(tiny), "--threads", "-3", "hi")[::2], "--threads")
    one_line_error(*run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "ab" * 200)[::2], "context", "256")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else object())
    one_line_error(*run(capfd, "generate", "-m", str(tiny), *ON, "hi")[::2], "llmgen[llamacpp]")


def test_inspect_and_logprobs_on_llama_cpp(capfd, tiny: Path) -> None:
    code, out, err = run(capfd, "inspect", "-m", str(tiny), *ON, "--raw", "--top-k", "5", "hello")
    assert code == 0 and out.strip(), err
    code, out, err = run(capfd, "generate", "-m", str(tiny), *ON, "--raw", "--greedy", "-N", "4", "--logprobs", "3",
                         "--json", "hello")
    assert code == 0, err
    [row] = rows(out)
    assert len(row["logprobs"]) == 4 and all(len(t["top_logprobs"]) == 3 for t in row["logprobs"])
    code, out, err = run(capfd, "generate", "-m", str(tiny), *ON, "--num-beams", "3", "-n", "2", "-N", "5", "--raw",
                         "--json", "hello")  # beams are rows of the engine's RowsCache: seq_cp repeats a parent
    assert code == 0, err
    beams = rows(out)
    assert len(beams) == 2 and beams[0]["score"] >= beams[1]["score"]
