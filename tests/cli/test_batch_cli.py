"""`generate --input FILE` and `generate -n N` at the command line: rows in input order, bad rows that
lose nothing, text records, --resume, and signals that leave every finished row written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run

ROOT = Path(__file__).resolve().parents[2]


def rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def generate(char_model, *args: str) -> tuple[str, ...]:
    return ("generate", "-m", str(char_model), "--raw", *args)


def test_plain_lines_give_one_json_row_per_prompt_in_input_order(capsys, tmp_path, char_model) -> None:
    prompts = write(tmp_path / "p.txt", "abc", "hello.", "a bad cafe", "h", "cab")
    code, out, err = run(capsys, *generate(char_model, "--greedy", "-N", "12", "--json", "-B", "2",
                                           "--input", str(prompts)))
    assert code == 0, err
    got = rows(out)
    assert [r["index"] for r in got] == [0, 1, 2, 3, 4]
    for row in got:
        assert set(row) >= {"index", "text", "token_ids", "prompt_token_ids", "finish_reason", "stats"}
        assert "id" not in row
    single = rows(run(capsys, *generate(char_model, "--greedy", "-N", "12", "--json", "hello."))[1])[0]
    assert got[1]["token_ids"] == single["token_ids"] and got[1]["text"] == single["text"]
    assert "5 prompts (0 failed)" in err


def test_bad_rows_get_an_error_and_the_others_go_on(capsys, tmp_path, char_model) -> None:
    prompts = write(tmp_path / "p.jsonl",
                    '{"prompt": "abc", "id": "first"}',
                    '{"prompt": "abc", oops}',
                    '{"prompt": "   "}',
                    '{"prompt": "' + "ab" * 200 + '"}',  # 400 tokens, over the 256-token context
                    '{"prompt": "h", "temperature": "hot"}',
                    '{"prompt": "h", "colour": 1}',
                    '[1, 2]',
                    '',
                    '{"prompt": "hello.", "id": 7, "max_new_tokens": 3}')
    code, out, err = run(capsys, *generate(char_model, "--greedy", "-N", "8", "--json", "--input", str(prompts)))
    assert code == 1
    got = rows(out)
    assert [r["index"] for r in got] == list(range(9))
    assert got[0]["id"] == "first" and "text" in got[0]
    assert got[8]["id"] == 7 and len(got[8]["token_ids"]) <= 3
    for index, needle in ((1, "invalid JSON"), (2, "empty"), (3, "context"), (4, "temperature"),
                          (5, "unknown key 'colour'"), (6, "object"), (7, "empty")):
        assert set(got[index]) <= {"index", "id", "error"} and needle in got[index]["error"], got[index]
        assert "\n" not in got[index]["error"]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == 'llmgen: error: 7 of 9 prompts failed; their rows hold an "error" field'


def test_row_keys_override_the_command_line_and_a_row_seed_is_generate_seed(capsys, tmp_path, char_model) -> None:
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "abc", "seed": 5, "max_new_tokens": 9, "ignore_eos": true}',
                    '{"prompt": "abc", "greedy": true, "max_new_tokens": 4, "ignore_eos": true}')
    code, out, _ = run(capsys, *generate(char_model, "--json", "--top-k", "5", "-N", "20", "--input", str(prompts)))
    assert code == 0
    got = rows(out)
    alone = rows(run(capsys, *generate(char_model, "--json", "--top-k", "5", "--seed", "5", "-N", "9",
                                       "--ignore-eos", "abc"))[1])[0]
    assert got[0]["token_ids"] == alone["token_ids"]
    greedy = rows(run(capsys, *generate(char_model, "--json", "--greedy", "-N", "4", "--ignore-eos", "abc"))[1])[0]
    assert got[1]["token_ids"] == greedy["token_ids"]


def test_seeded_rows_are_the_same_at_any_batch_size_and_unordered_writes_each_once(capsys, tmp_path,
                                                                                    char_model) -> None:
    prompts = write(tmp_path / "p.txt", *["abc", "hello.", "cab", "h", "bead", "fade."] * 2)
    base = generate(char_model, "--seed", "3", "-N", "15", "--json", "--input", str(prompts))
    one = rows(run(capsys, *base, "-B", "1")[1])
    four = rows(run(capsys, *base, "-B", "4")[1])
    unordered = rows(run(capsys, *base, "-B", "4", "--unordered")[1])
    assert one == [{**r, "stats": one[i]["stats"]} for i, r in enumerate(four)]
    assert sorted(r["index"] for r in unordered) == list(range(12))
    by_index = {r["index"]: r["token_ids"] for r in unordered}
    assert [by_index[i] for i in range(12)] == [r["token_ids"] for r in four]
    assert one[0]["token_ids"] != one[6]["token_ids"]  # same prompt, another index: another random stream


def test_text_records_are_separated_by_a_record_separator_line_or_ended_by_nul(capsys, monkeypatch,
                                                                                char_model) -> None:
    base = generate(char_model, "--greedy", "-N", "6", "--ignore-eos", "--input", "-", "-q")
    code, out, _ = run(capsys, *base, stdin=b"abc\nhello.\nh\n", monkeypatch=monkeypatch)
    assert code == 0
    records = out.split("\n\x1e\n")
    assert len(records) == 3 and out.endswith("\n") and all(len(r.strip("\n")) == 6 for r in records)
    code, out, _ = run(capsys, *base, "-0", stdin=b"abc\nhello.\nh\n", monkeypatch=monkeypatch)
    assert out.count("\0") == 3 and out.endswith("\0")
    assert [r for r in out.split("\0") if r] == [r.rstrip("\n") for r in records]


def test_resume_skips_the_rows_already_written_and_appends_the_rest(capsys, tmp_path, char_model) -> None:
    prompts = write(tmp_path / "p.txt", "abc", "hello.", "cab", "h", "bead")
    base = generate(char_model, "--greedy", "-N", "8", "--input", str(prompts))
    full = rows(run(capsys, *base, "--json")[1])
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(full[0]) + "\n" + json.dumps(full[3]) + "\n" + '{"index": 4, "te')  # killed mid-row
    code, stdout, _ = run(capsys, *base, "--resume", str(out))
    assert code == 0 and stdout == ""
    lines = out.read_text().splitlines()
    assert lines[2] == '{"index": 4, "te'
    got = [json.loads(line) for line in lines if line != '{"index": 4, "te']
    assert sorted(r["index"] for r in got) == [0, 1, 2, 3, 4]
    assert {r["index"]: r["token_ids"] for r in got} == {r["index"]: r["token_ids"] for r in full}
    code, _, _ = run(capsys, *base, "--resume", str(out))  # nothing left to do
    assert code == 0 and len(out.read_text().splitlines()) == len(lines)


@pytest.mark.parametrize("args,needle", [
    (("--input", "p.txt", "abc"), "either a PROMPT or --input"),
    (("--input", "p.txt", "-n", "2"), "-n > 1"),
    (("--input", "p.txt", "--num-beams", "2"), "beam search"),
    (("--input", "missing.txt"), "missing.txt"),
    (("--input", "p.txt", "--batch-size", "0"), "batch-size"),
])
def test_usage_errors_exit_2_with_one_line(capsys, tmp_path, monkeypatch, char_model, args, needle) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "p.txt", "abc")
    code, out, err = run(capsys, *generate(char_model, *args))
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmgen: error: ") and needle in lines[0], err


def test_n_samples_decode_as_one_batch_and_print_in_order(capsys, char_model) -> None:
    code, out, err = run(capsys, *generate(char_model, "--seed", "4", "-N", "10", "-n", "3", "--json", "abc"))
    assert code == 0
    got = rows(out)
    assert len(got) == 3 and len({tuple(r["token_ids"]) for r in got}) == 3
    first = rows(run(capsys, *generate(char_model, "--seed", "4", "-N", "10", "--json", "abc"))[1])[0]
    assert got[0]["token_ids"] == first["token_ids"]  # sample 0 draws with --seed itself
    code, text, err = run(capsys, *generate(char_model, "--seed", "4", "-N", "10", "-n", "3", "abc"))
    assert code == 0 and text.split("\n\n") == [r["text"] + ("\n" if i == 2 else "") for i, r in enumerate(got)]
    assert err.count("finish") == 3


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_leaves_every_finished_row_written(tmp_path, long_char_model, sig, code) -> None:
    """Row 0 ends after 4 tokens; rows 2 and 3 end earlier but wait for row 1, which runs until the signal."""
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "abc", "max_new_tokens": 4}',
                    '{"prompt": "cab", "max_new_tokens": 15000}', '{"prompt": "h", "max_new_tokens": 2, "id": "x"}',
                    '{"prompt": "bead", "max_new_tokens": 3}')
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llmgen", "generate", "-m", str(long_char_model), "--raw",
                             "--ignore-eos", "--seed", "1", "--json", "-B", "4", "--input", str(prompts)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # row 0: by now rows 2 and 3 have finished too, held back for row 1
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Traceback" not in err
    written = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert [r["index"] for r in written] == [0, 2, 3]  # the held rows are written, with their index
    assert written[1]["id"] == "x" and len(written[1]["token_ids"]) == 2
