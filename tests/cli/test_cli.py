"""The `llmgen` command, run in-process (main(argv) returns the exit code) and as a subprocess for
pipes and signals. Bad input must give one line on stderr, no traceback, and a nonzero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run

ROOT = Path(__file__).resolve().parents[2]


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("llmgen: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_plain_text_on_stdout_and_stats_on_stderr(capsys, char_model) -> None:
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--seed", "1", "-N", "12",
                         "--ignore-eos", "abc")
    assert code == 0
    assert len(out.rstrip("\n")) >= 1 and out.endswith("\n")
    assert "generated tokens 12" in err and "tok/s" in err


def test_json_output_has_the_documented_fields(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--seed", "1", "-N", "9",
                       "--json", "-n", "2", "abc")
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == 2
    for obj in objects:
        assert set(obj) >= {"text", "token_ids", "prompt_token_ids", "finish_reason", "stats"}
        assert obj["finish_reason"] in ("length", "eos", "stop")
        assert obj["prompt_token_ids"] == [3, 4, 5]
        assert set(obj["stats"]) >= {"prompt_tokens", "generated_tokens", "prefill_seconds", "decode_seconds",
                                     "tokens_per_second"}
        assert obj["stats"]["generated_tokens"] == len(obj["token_ids"])


def test_seed_reproduces_and_json_text_matches_token_ids(capsys, char_model) -> None:
    args = ("generate", "-m", str(char_model), "--raw", "-N", "15", "--ignore-eos", "--json", "abc")
    first = json.loads(run(capsys, *args, "--seed", "5")[1])
    again = json.loads(run(capsys, *args, "--seed", "5")[1])
    other = json.loads(run(capsys, *args, "--seed", "6")[1])
    assert first["token_ids"] == again["token_ids"] != other["token_ids"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(char_model)
    assert first["text"] == tokenizer.decode(first["token_ids"], skip_special_tokens=True)


def test_prompt_from_stdin(capsys, monkeypatch, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--greedy", "-N", "5", "--json",
                       stdin=b"abc", monkeypatch=monkeypatch)
    assert code == 0
    assert json.loads(out)["prompt_token_ids"] == [3, 4, 5]


def test_chat_is_the_default_when_the_tokenizer_has_a_template(capsys, char_model) -> None:
    _, out, _ = run(capsys, "generate", "-m", str(char_model), "--greedy", "-N", "3", "--json", "ab")
    # template: "h " + content + "." then "a " for the generation prompt
    assert json.loads(out)["prompt_token_ids"] == [10, 11, 3, 4, 12, 3, 11]
    _, out, _ = run(capsys, "generate", "-m", str(char_model), "--greedy", "-N", "3", "--json",
                    "--system", "c", "ab")
    assert json.loads(out)["prompt_token_ids"][:4] == [9, 11, 5, 12]


def test_stop_string_ends_generation(capsys, char_model) -> None:
    base = ("generate", "-m", str(char_model), "--raw", "--greedy", "-N", "40", "--ignore-eos", "--json", "abc")
    full = json.loads(run(capsys, *base)[1])["text"]
    stop = full[3:5]
    cut = json.loads(run(capsys, *base, "--stop", stop)[1])
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[:full.index(stop)]


def test_preset_is_applied_and_flags_override_it(capsys, tmp_path, char_model) -> None:
    preset = tmp_path / "mine.toml"
    preset.write_text('description = "test"\ntemperature = 0.5\ntop-k = 3\nmax_new_tokens = 7\n')
    code, out, _ = run(capsys, "generate", "--preset", str(preset), "--top-k", "5", "--dump-config", "x")
    assert code == 0
    lines = dict(line.split(" = ", 1) for line in out.splitlines())
    assert lines["temperature"] == "0.5  # preset mine"
    assert lines["top_k"] == "5  # flag"
    assert lines["max_new_tokens"] == "7  # preset mine"
    assert lines["top_p"] == "1.0  # default"


@pytest.mark.parametrize("name", ["greedy", "balanced", "creative", "precise", "code"])
def test_builtin_presets_load(capsys, name: str) -> None:
    code, out, _ = run(capsys, "generate", "--preset", name, "--dump-config")
    assert code == 0 and f"# preset {name}" in out


def test_presets_list_and_show(capsys) -> None:
    code, out, _ = run(capsys, "presets", "list")
    assert code == 0 and all(n in out for n in ("greedy", "balanced", "creative", "precise", "code"))
    code, out, _ = run(capsys, "presets", "show", "precise")
    assert code == 0 and "temperature = 0.2" in out


def test_models_list_shows_the_embedded_aliases(capsys) -> None:
    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {row["alias"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and {"smollm2-135m", "small"} <= set(rows)
    assert rows["small"]["quant"] == "int4" and rows["smollm2-135m"]["quant"] == "none"


def test_version(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("llmgen ")


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top-p"),
    (["--top-p", "1.5"], "top-p"),
    (["--frequency-penalty", "2.5"], "frequency-penalty"),
    (["--presence-penalty", "-3"], "presence-penalty"),
    (["--top-k", "-1"], "top-k"),
    (["-n", "0"], "n"),
    (["--penalty-scope", "everything"], "penalty-scope"),
    (["--temperature", "abc"], "--temperature"),
    (["--greedy", "--temperature", "0.5"], "--greedy"),
    (["--preset", "nope"], "unknown preset"),
    (["--preset", "../../etc/passwd"], "preset"),
])
def test_bad_values_are_one_line_usage_errors(capsys, args: list[str], needle: str) -> None:
    code, _, err = run(capsys, "generate", *args, "--dump-config", "hello")
    assert code == 2
    assert_one_line_error(err, needle)


@pytest.mark.parametrize("content,needles", [
    ("temperature = 0.5\ntop_q = 0.9\n", ["bad.toml:2", "unknown key 'top_q'"]),
    ("temperature = 0.5\ntop_p = [\n", ["bad.toml", "line 2"]),
    ("top_k = \"many\"\n", ["bad.toml:1", "integer"]),
    ("\n\ntop_p = 3.0\n", ["bad.toml:3", "top-p"]),
])
def test_bad_presets_name_file_and_line(capsys, tmp_path, content: str, needles: list[str]) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text(content)
    code, _, err = run(capsys, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    assert_one_line_error(err, *needles)


def test_missing_model_is_one_line_error(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "generate", "-m", str(tmp_path / "nothing.gguf"), "hi")
    assert code == 1
    assert_one_line_error(err, "not found")
    code, _, err = run(capsys, "generate", "-m", "no-such-alias", "hi")
    assert code == 1
    assert_one_line_error(err, "model not found")


def test_unreadable_model_directory_is_one_line_error(capsys, tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = run(capsys, "generate", "-m", str(tmp_path), "hi")
    assert code == 1
    assert_one_line_error(err, "config.json")


def test_empty_prompt_is_an_error(capsys, monkeypatch, char_model) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "   ")
    assert code == 2
    assert_one_line_error(err, "empty")
    code, _, err = run(capsys, "generate", "-m", str(char_model), stdin=b"", monkeypatch=monkeypatch)
    assert code == 2
    assert_one_line_error(err, "empty")


def test_prompt_longer_than_the_context_is_an_error(capsys, char_model) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", "ab" * 200)
    assert code == 2
    assert_one_line_error(err, "400 tokens", "context is 256")


def test_unsupported_gguf_architecture_is_one_line_error(capsys, tmp_path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), arch="no-such-arch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, _, err = run(capsys, "generate", "-m", str(path), "hi")
    assert code == 1
    assert_one_line_error(err, "odd.gguf")


# --- subprocess: pipes and signals -------------------------------------------------------------

def llmgen_process(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "llmgen", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_head_closes_the_pipe_quietly(char_model) -> None:
    pipeline = (f"{sys.executable} -m llmgen generate -m {char_model} --raw --ignore-eos -N 5000 --seed 1 abc"
                " | head -c 20")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, cwd=ROOT, timeout=120)
    assert len(done.stdout) == 20
    assert done.stderr == b"", done.stderr.decode()
    assert done.returncode == 0


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_printed_text_and_exits_with_the_right_code(long_char_model, sig, code) -> None:
    proc = llmgen_process("generate", "-m", str(long_char_model), "--raw", "--ignore-eos", "-N", "16000",
                          "--seed", "1", "abc")
    first = proc.stdout.read(10)  # wait until text is flowing
    time.sleep(0.2)
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert len(first) == 10 and b"Traceback" not in err
    assert len(first + rest) > 10
