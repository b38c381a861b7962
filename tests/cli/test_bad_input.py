"""Bad input from strangers at the command line: presets, prompts on stdin, and a stdout whose reader
has gone away, in every command. Each bad input is one line on stderr, no traceback, exit 2; a closed
pipe is a quiet exit 0.

Rows already covered elsewhere (and listed with these in the README): tests/test_cli.py
(`test_bad_presets_name_file_and_line`, `test_bad_values_are_one_line_usage_errors`,
`test_empty_prompt_is_an_error`, `test_prompt_longer_than_the_context_is_an_error`,
`test_head_closes_the_pipe_quietly`, `test_signal_keeps_printed_text_and_exits_with_the_right_code`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
from helpers import one_line_error

from llmgen.cli.common import MAX_STDIN_BYTES
from llmgen.presets import MAX_PRESET_BYTES

ROOT = Path(__file__).resolve().parents[2]


def run(capsys, monkeypatch, *argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    return helpers.run(capsys, *argv, stdin=stdin, monkeypatch=monkeypatch)


# --- presets -------------------------------------------------------------------------------------

@pytest.fixture
def user_presets(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LLMGEN_CONFIG_DIR", str(tmp_path / "config"))
    directory = tmp_path / "config" / "presets"
    directory.mkdir(parents=True)
    return directory


@pytest.mark.parametrize("content,line", [
    ("temperature = 0.5\n\ntop_p = 0.9 0.8\n", 3),
    ("description = \"unterminated\n", 1),
    ("[a\n", 1),
    ("temperature = 0.5\ntemperature = 0.6\n", 2),  # a duplicate key is a TOML error too
])
def test_a_user_preset_with_a_syntax_error_names_file_and_line(capsys, monkeypatch, user_presets,
                                                               content: str, line: int) -> None:
    (user_presets / "broken.toml").write_text(content)
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", "broken", "--dump-config", "x")
    assert code == 2
    one_line_error(err, str(user_presets / "broken.toml"), "invalid TOML", f"line {line}")


@pytest.mark.parametrize("content,needles", [
    ("temperature = true\n", [":1:", "temperature", "must be a number"]),
    ("top_k = 2.5\n", [":1:", "top-k", "must be an integer"]),
    ("top_p = \"0.9\"\n", [":1:", "top-p", "must be a number"]),
    ("min_p = [0.1]\n", [":1:", "min-p", "must be a number"]),
    ("ignore_eos = \"yes\"\n", [":1:", "ignore-eos", "true or false"]),
    ("seed = 1.5\n", [":1:", "seed", "integer"]),
    ("stop = 3\n", [":1:", "stop", "string"]),
    ("greedy = 1\n", [":1:", "greedy", "true or false"]),
    ("\ndescription = 5\n", [":2:", "description must be a string"]),
    ("penalty_scope = 1\n", [":1:", "penalty-scope", "must be a string"]),
    ("max_new_tokens = { a = 1 }\n", [":1:", "max-new-tokens", "integer"]),
])
def test_a_preset_value_of_the_wrong_type_names_file_line_and_type(capsys, monkeypatch, tmp_path,
                                                                    content: str, needles: list[str]) -> None:
    preset = tmp_path / "typed.toml"
    preset.write_text(content)
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "typed.toml", *needles)


@pytest.mark.parametrize("content,needles", [
    ("temperature = 0.5\ntop_q = 0.9\n", [":2:", "unknown key 'top_q'"]),
    ("[sampling]\ntemperature = 0.5\n", ["unknown key 'sampling'"]),
    ("model = \"smollm2-135m\"\n", [":1:", "unknown key 'model'"]),
    ("\"temperature \" = 0.5\n", ["unknown key 'temperature '"]),
])
def test_unknown_preset_keys_are_refused(capsys, monkeypatch, tmp_path, content: str, needles: list[str]) -> None:
    preset = tmp_path / "unknown.toml"
    preset.write_text(content)
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "unknown.toml", *needles)


def test_an_unknown_table_in_a_preset_names_its_line(capsys, monkeypatch, tmp_path) -> None:
    preset = tmp_path / "table.toml"
    preset.write_text("temperature = 0.5\n[sampling]\ntop_k = 3\n")
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "table.toml:2:", "unknown key 'sampling'")


@pytest.mark.parametrize("content,needle", [
    ("temperature = -0.1\n", "temperature"),
    ("top_p = 0\n", "top-p"),
    ("top_p = 1.01\n", "top-p"),
    ("min_p = 1.5\n", "min-p"),
    ("top_k = -1\n", "top-k"),
    ("frequency_penalty = 2.01\n", "frequency-penalty"),
    ("presence_penalty = -3\n", "presence-penalty"),
    ("repetition_penalty = 0\n", "repetition-penalty"),
    ("penalty_window = -5\n", "penalty-window"),
    ("penalty_scope = \"everything\"\n", "penalty-scope"),
    ("max_new_tokens = 0\n", "max-new-tokens"),
    ("n = 0\n", "invalid value for n"),
    ("temperature = nan\n", "temperature"),
    ("top_p = inf\n", "top-p"),
])
def test_out_of_range_preset_values_name_file_and_line(capsys, monkeypatch, tmp_path, content: str,
                                                      needle: str) -> None:
    preset = tmp_path / "range.toml"
    preset.write_text("description = \"x\"\n" + content)
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "range.toml:2:", needle)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "../presets/greedy", "greedy/../../x",
                                  "~/secret", "-rf", "a\\..\\b", ".hidden", "greedy\n"])
def test_preset_names_cannot_escape_the_presets_directories(capsys, monkeypatch, user_presets, name: str) -> None:
    (user_presets.parent / "secret.toml").write_text("temperature = 0.1\n")  # just outside the directory
    code, out, err = run(capsys, monkeypatch, "generate", "--preset", name, "--dump-config", "x")
    assert code == 2 and out == ""
    one_line_error(err, "preset")


def test_a_huge_preset_is_refused_before_it_is_read(capsys, monkeypatch, tmp_path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (MAX_PRESET_BYTES // 10 + 1))
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(big), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "big.toml", "too large")
    sparse = tmp_path / "sparse.toml"  # 10 GB that would take minutes (and all memory) to read
    with open(sparse, "wb") as handle:
        handle.truncate(10 * 1024**3)
    started = time.perf_counter()
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(sparse), "--dump-config", "x")
    assert code == 2 and time.perf_counter() - started < 5
    one_line_error(err, "sparse.toml", "too large")


@pytest.mark.parametrize("content,needle", [
    (b"temperature = 0.5\n\xff\xfe\n", "not UTF-8"),
    (b"\x00\x00\x00", "invalid TOML"),
])
def test_a_binary_preset_is_one_line_error(capsys, monkeypatch, tmp_path, content: bytes, needle: str) -> None:
    preset = tmp_path / "binary.toml"
    preset.write_bytes(content)
    code, _, err = run(capsys, monkeypatch, "generate", "--preset", str(preset), "--dump-config", "x")
    assert code == 2
    one_line_error(err, "binary.toml", needle)


def test_a_broken_user_preset_makes_presets_list_fail_in_one_line(capsys, monkeypatch, user_presets) -> None:
    (user_presets / "bad.toml").write_text("top_p = 7\n")
    code, _, err = run(capsys, monkeypatch, "presets", "list")
    assert code == 2
    one_line_error(err, "bad.toml:1", "top-p")


# --- prompts -------------------------------------------------------------------------------------

GENERATE = ("generate", "--raw", "--greedy", "-N", "4", "--ignore-eos", "--json")


def test_invalid_utf8_on_stdin_is_replaced_with_a_warning_and_generation_goes_on(capsys, monkeypatch,
                                                                                   char_model) -> None:
    code, out, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), stdin=b"ab\xff\xfec\xc3")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("llmgen: warning:")]
    assert warnings == ["llmgen: warning: stdin is not valid UTF-8; invalid bytes were replaced with U+FFFD"]
    result = json.loads(out)
    unk = 2  # U+FFFD is not in the char vocabulary
    assert result["prompt_token_ids"] == [3, 4, unk, unk, 5, unk] and len(result["token_ids"]) == 4


def test_a_real_replacement_character_on_stdin_gives_no_warning(capsys, monkeypatch, char_model) -> None:
    code, _, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), stdin="ab\ufffdc".encode())
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("stdin", [b"", b"   ", b"\n\n\t\n"], ids=["empty", "spaces", "newlines"])
def test_an_empty_stdin_is_a_usage_error(capsys, monkeypatch, char_model, stdin: bytes) -> None:
    code, out, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), stdin=stdin)
    assert code == 2 and out == ""
    one_line_error(err, "the prompt is empty")


@pytest.mark.parametrize("command", ["generate", "speculate"])
def test_nul_bytes_in_the_prompt_are_refused(capsys, monkeypatch, char_model, command: str) -> None:
    extra = ["--draft", "ngram"] if command == "speculate" else []
    code, out, err = run(capsys, monkeypatch, command, "-m", str(char_model), *extra, "--raw",
                         stdin=b"abc\x00def")
    assert code == 2 and out == ""
    one_line_error(err, "NUL byte", "at character 3")
    code, _, err = run(capsys, monkeypatch, command, "-m", str(char_model), *extra, "--raw", "a\x00")
    assert code == 2
    one_line_error(err, "NUL byte")


def test_a_prompt_on_stdin_longer_than_the_context_is_a_usage_error(capsys, monkeypatch, char_model) -> None:
    code, out, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), stdin=b"ab" * 200)
    assert code == 2 and out == ""
    one_line_error(err, "400 tokens", "context is 256")


def test_a_prompt_that_fills_the_context_exactly_leaves_no_room_and_is_refused(capsys, monkeypatch,
                                                                                 char_model) -> None:
    code, _, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), "a" * 256)
    assert code == 2
    one_line_error(err, "256 tokens", "context is 256")
    code, out, _ = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), "a" * 255)
    assert code == 0 and len(json.loads(out)["token_ids"]) == 1  # cut to the one position left


def test_a_huge_stdin_is_refused_before_tokenizing(capsys, monkeypatch, char_model) -> None:
    started = time.perf_counter()
    code, _, err = run(capsys, monkeypatch, *GENERATE, "-m", str(char_model), stdin=b"a" * (MAX_STDIN_BYTES + 1))
    assert code == 2 and time.perf_counter() - started < 10
    one_line_error(err, "larger than 16 MiB")


# --- broken pipe in every command --------------------------------------------------------------

def commands(char_model: Path, prompts: Path) -> dict[str, list[str]]:
    tiny = ["-m", str(char_model), "--raw", "--ignore-eos", "--seed", "1"]
    return {
        "generate": ["generate", *tiny, "-N", "200", "abc"],
        "generate --json -n 3": ["generate", *tiny, "-N", "50", "--json", "-n", "3", "abc"],
        "speculate": ["speculate", *tiny, "--draft", "ngram", "-N", "200", "abc abc"],
        "inspect": ["inspect", *tiny, "--steps", "20", "abc"],
        "inspect --json": ["inspect", *tiny, "--steps", "20", "--json", "abc"],
        "bench": ["bench", "--model", str(char_model), "--prompts", str(prompts), "-s", "plain", "--runs", "1",
                  "--warmup", "0", "--max-new-tokens", "4", "--quiet"],
        "models list": ["models", "list"],
        "presets list": ["presets", "list"],
        "presets show": ["presets", "show", "balanced"],
        "--help": ["generate", "--help"],
        "--version": ["--version"],
    }


COMMANDS = list(commands(Path("m"), Path("p")))


@pytest.fixture(scope="module")
def closed_stdout_runs(tmp_path_factory: pytest.TempPathFactory, char_model: Path) -> dict[str, tuple[int, str]]:
    """Every command at once (they are mostly start-up time), each with a stdout pipe whose reader is
    gone before the first write, so that every write fails with EPIPE. name -> (exit code, stderr)."""
    prompts = tmp_path_factory.mktemp("pipe") / "prompts.txt"
    prompts.write_text("abc\n")
    procs = {}
    for name, argv in commands(char_model, prompts).items():
        read_end, write_end = os.pipe()
        os.close(read_end)
        procs[name] = subprocess.Popen([sys.executable, "-m", "llmgen", *argv], stdout=write_end,
                                       stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
        os.close(write_end)
    return {name: (proc.wait(timeout=300), proc.stderr.read().decode()) for name, proc in procs.items()}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_closed_stdout_is_a_quiet_exit_0_in_every_command(closed_stdout_runs, name: str) -> None:
    code, err = closed_stdout_runs[name]
    assert err == ""
    assert code == 0
