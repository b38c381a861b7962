"""`generate --prompt-cache FILE` and `chat --prompt-cache FILE` (`loading/prompt_cache.py`) on both engines,
with the same tiny GGUF: the second run reads the prompt's cells from the file and prefills only the rest,
and prints what the first run printed; a file of another model is ignored in one line and replaced; a
damaged file is refused in one line; an option the cache cannot serve is refused in one line.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import one_line_error, run
from tiny_gguf import write_tiny_llama

ENGINES = ["torch", pytest.param("llamacpp", marks=pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="the llamacpp extra is not installed"))]
PROMPT = "abc abd bca cab " * 12 + "ba"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prompt-cache")
    return write_tiny_llama(directory / "tiny.gguf", seed=1), write_tiny_llama(directory / "other.gguf", seed=3)


def generate(capsys, model, engine: str, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run(capsys, "generate", "-m", str(model), "--engine", engine, "--raw", "--json", "-N", "8",
                         *extra, PROMPT)
    return code, (json.loads(out) if code == 0 else {}), err


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sampling", [["--greedy"], ["--temperature", "0.8", "--seed", "3"]], ids=["greedy", "seeded"])
def test_the_second_run_reads_the_prompt_from_the_file(capsys, files, tmp_path, engine, sampling) -> None:
    model, _ = files
    path = tmp_path / "prompt.kv"
    code, plain, _ = generate(capsys, model, engine, *sampling)
    assert code == 0
    code, first, _ = generate(capsys, model, engine, *sampling, "--prompt-cache", str(path))
    assert code == 0 and path.exists() and first["stats"]["cached_tokens"] == 0
    code, second, err = generate(capsys, model, engine, *sampling, "--prompt-cache", str(path))
    assert code == 0 and second["stats"]["cached_tokens"] == len(second["prompt_token_ids"]) - 1
    assert second["token_ids"] == first["token_ids"] == plain["token_ids"]
    assert second["text"] == plain["text"]
    # a longer prompt that begins the same way reads the shared part
    code, out, _ = run(capsys, "generate", "-m", str(model), "--engine", engine, "--raw", "--json", "-N", "4",
                       *sampling, "--prompt-cache", str(path), PROMPT + " abc")
    assert code == 0 and json.loads(out)["stats"]["cached_tokens"] > len(second["prompt_token_ids"]) // 2


@pytest.mark.parametrize("engine", ENGINES)
def test_a_file_of_another_model_is_ignored_in_one_line_and_replaced(capsys, files, tmp_path, engine) -> None:
    model, other = files
    path = tmp_path / "prompt.kv"
    assert generate(capsys, other, engine, "--greedy", "--prompt-cache", str(path))[0] == 0
    code, plain, _ = generate(capsys, model, engine, "--greedy")
    code, out, err = generate(capsys, model, engine, "--greedy", "--prompt-cache", str(path))
    notes = [line for line in err.splitlines() if "prompt.kv" in line]
    assert code == 0 and len(notes) == 1 and "another model" in notes[0] and "Traceback" not in err
    assert out["token_ids"] == plain["token_ids"] and out["stats"]["cached_tokens"] == 0
    code, again, _ = generate(capsys, model, engine, "--greedy", "--prompt-cache", str(path))
    assert again["stats"]["cached_tokens"] > 0  # it was replaced by this model's


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-ours"])
def test_a_damaged_file_is_refused_in_one_line(capsys, files, tmp_path, engine, damage) -> None:
    model, _ = files
    path = tmp_path / "prompt.kv"
    assert generate(capsys, model, engine, "--greedy", "--prompt-cache", str(path))[0] == 0
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "flipped":
        data[-100] ^= 0xFF
    else:
        data = bytearray(b"not a safetensors file at all")
    path.write_bytes(bytes(data))
    code, _, err = generate(capsys, model, engine, "--greedy", "--prompt-cache", str(path))
    assert code != 0
    one_line_error(err, str(path))


def test_options_the_file_cannot_serve_are_refused(capsys, files, tmp_path) -> None:
    model, _ = files
    code, _, err = run(capsys, "generate", "-m", str(model), "-n", "2", "--prompt-cache", str(tmp_path / "x.kv"), "ab")
    assert code == 2
    one_line_error(err, "--prompt-cache")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_chat_resumes_from_its_file(capsys, files, tmp_path, monkeypatch, engine) -> None:
    model, _ = files
    path = tmp_path / "chat.kv"
    args = ["chat", "-m", str(model), "--engine", engine, "--greedy", "-N", "6", "--json", "--system", PROMPT,
            "--prompt-cache", str(path)]
    code, first, _ = run(capsys, *args, stdin=b"abc\n", monkeypatch=monkeypatch)
    assert code == 0 and path.exists()
    code, second, err = run(capsys, *args, stdin=b"abc\n", monkeypatch=monkeypatch)
    before, after = json.loads(first), json.loads(second)
    assert code == 0 and before.pop("stats")["cached_tokens"] == 0 and after.pop("stats")["cached_tokens"] > 0
    assert after == before
