"""The new sampler options on the command line, in presets and in --input rows; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import one_line_error as assert_one_line_error
from helpers import run

from llmgen.decoding.config import DecodingConfig
from llmgen.prompt_file import parse

BAD = [
    (["--logit-bias", "5:2"], "ID=BIAS"),
    (["--logit-bias", "five=2"], "ID=BIAS"),
    (["--logit-bias", "99=1"], "unknown token id 99"),
    (["--logit-bias", "5=101"], "[-100, 100]"),
    (["--samplers", "top_k;warp"], "unknown stage 'warp'"),
    (["--samplers", "top_k;temperature;top_k"], "'top_k' twice"),
    (["--min-tokens", "-1"], "min-tokens"),
    (["--mirostat", "1"], "only Mirostat v2"),
    (["--dry-sequence-breaker", ""], "dry-sequence-breaker"),
    (["--chat-template-kwarg", "enable_thinking"], "KEY=VALUE"),
    (["--stop-token-id", "400"], "unknown token id 400"),
    (["--samplers", "temperature", "--top-k", "3"], "leaves out 'top_k'"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_sampler_options_are_one_line_and_exit_2(capsys, char_model: Path, args: list[str], needle: str) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", *args, "ab")
    assert code == 2
    assert_one_line_error(err, needle)


def test_dump_config_shows_the_order_and_the_new_values(capsys, char_model: Path) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--samplers", "llama.cpp", "--logit-bias", "3=2.5",
                       "--dry-multiplier", "0.8", "--dump-config", "x")
    assert code == 0
    lines = dict(line.split(" = ", 1) for line in out.splitlines())
    assert lines["samplers"].startswith('["penalties", "dry", "top_n_sigma", "top_k"')
    assert lines["samplers"].endswith("# flag") and '"temperature", "mirostat"]' in lines["samplers"]
    assert lines["logit_bias"].startswith("[[3, 2.5]]")
    assert lines["dry_sequence_breakers"].startswith('["\\n", ":"')


def test_every_stage_runs_from_the_command_line(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--json", "--seed", "1", "-N", "6",
                         "--ignore-eos", "--logit-bias", "3=1", "--min-tokens", "2", "--bad-word", "ab",
                         "--dry-multiplier", "0.8", "--typical-p", "0.95", "--epsilon-cutoff", "0.001",
                         "--eta-cutoff", "0.001", "--top-n-sigma", "2", "--xtc-probability", "0.3",
                         "--mirostat", "2", "--dynatemp-range", "0.3", "habhab")
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 6


def test_inspect_shows_each_new_stage_that_is_on(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "inspect", "-m", str(char_model), "--raw", "--json", "--seed", "1",
                         "--logit-bias", "3=1", "--dry-multiplier", "0.8", "--typical-p", "0.9",
                         "--xtc-probability", "0.5", "--mirostat", "2", "habhab")
    assert code == 0, err
    names = [s["name"] for s in json.loads(out.splitlines()[0])["stages"]]
    assert names == ["raw", "mask", "penalties", "dry", "temperature", "top_k", "typical_p", "top_p", "min_p",
                     "xtc", "mirostat"]


def test_stop_token_id_ends_the_output_and_min_tokens_holds_eos_back(capsys, char_model: Path) -> None:
    base = ("generate", "-m", str(char_model), "--raw", "--json", "--greedy", "-N", "8", "habhab")
    code, out, _ = run(capsys, *base)
    first = json.loads(out)["token_ids"]
    code, out, _ = run(capsys, *base, "--stop-token-id", str(first[1]))
    row = json.loads(out)
    assert row["token_ids"] == first[:2] and row["finish_reason"] == "stop"
    code, out, _ = run(capsys, *base, "--min-tokens", "8", "--logit-bias", "1=100")  # </s> wanted, held back
    row = json.loads(out)
    assert 1 not in row["token_ids"][:7]


def test_min_tokens_holds_stop_strings_back(capsys, char_model: Path) -> None:
    base = ("generate", "-m", str(char_model), "--raw", "--json", "--greedy", "-N", "8", "--ignore-eos", "habhab")
    text = json.loads(run(capsys, *base)[1])["text"]
    stop = text[1]
    cut = json.loads(run(capsys, *base, "--stop", stop)[1])
    held = json.loads(run(capsys, *base, "--stop", stop, "--min-tokens", "8")[1])
    assert len(cut["token_ids"]) < 8 and len(held["token_ids"]) == 8


def test_preset_keys_and_input_rows_carry_the_new_options(capsys, tmp_path: Path, char_model: Path) -> None:
    preset = tmp_path / "s.toml"
    preset.write_text('samplers = "llama.cpp"\ndry-multiplier = 0.8\nbad-words = ["ab"]\n'
                      '[logit-bias]\n"3" = 2.0\n')
    code, out, _ = run(capsys, "generate", "--preset", str(preset), "--dump-config", "x")
    lines = dict(line.split(" = ", 1) for line in out.splitlines())
    assert code == 0 and lines["dry_multiplier"].startswith("0.8") and lines["logit_bias"].startswith("[[3, 2.0]]")
    jobs = parse('{"prompt": "p", "logit_bias": {"3": -5}, "samplers": "top_k;temperature", "min_tokens": 2}',
                 DecodingConfig())
    assert jobs[0].error is None
    assert jobs[0].config.logit_bias == ((3, -5.0),) and jobs[0].config.min_tokens == 2
    assert jobs[0].config.samplers == ("top_k", "temperature")
    bad = parse('{"prompt": "p", "mirostat": 1}', DecodingConfig())
    assert "only Mirostat v2" in bad[0].error


@pytest.mark.parametrize("args", [["--typical-p", "0.9"], ["--logit-bias", "3=1"], ["--dry-multiplier", "0.5"],
                                  ["--samplers", "llama.cpp"]])
def test_beam_search_refuses_the_stages_it_does_not_run(capsys, char_model: Path, args: list[str]) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "2", *args, "ab")
    assert code == 2
    assert_one_line_error(err, "--num-beams")


def test_batched_rows_run_the_same_chain_as_one_sequence(capsys, char_model: Path) -> None:
    """Row 0 of `-n 3 --seed S` is what `--seed S` alone draws, with every context-dependent stage on."""
    args = ("generate", "-m", str(char_model), "--raw", "--json", "--seed", "5", "-N", "8", "--ignore-eos",
            "--bad-word", "ab", "--min-tokens", "3", "--dry-multiplier", "0.8", "--dry-allowed-length", "1",
            "--xtc-probability", "0.5", "--mirostat", "2", "--mirostat-tau", "2", "habhab")
    alone = json.loads(run(capsys, *args)[1])
    rows = [json.loads(line) for line in run(capsys, *args, "-n", "3")[1].splitlines()]
    assert rows[0]["token_ids"] == alone["token_ids"]


def test_input_rows_with_their_own_token_controls(capsys, tmp_path: Path, char_model: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "habhab", "stop_token_ids": [3]}\n{"prompt": "habhab", "allowed_token_ids": [4]}\n')
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--json", "--greedy", "-N", "4",
                         "--ignore-eos", "--input", str(rows))
    assert code == 0, err
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["token_ids"][-1] == 3 or 3 not in first["token_ids"]
    assert second["token_ids"] == [4, 4, 4, 4]
