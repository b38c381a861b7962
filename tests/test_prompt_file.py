"""Prompt files for `generate --input`: the format is decided by the first non-blank line, line i is
prompt i, and a bad line becomes an error job without touching the others."""

from __future__ import annotations

from llmgen.decoding.config import DecodingConfig
from llmgen.prompt_file import parse

BASE = DecodingConfig(temperature=0.7, max_new_tokens=32)


def test_plain_lines_keep_their_text_and_index_and_drop_a_carriage_return() -> None:
    jobs = parse("first prompt\r\n  {not json, a plain line}\n\nlast", BASE)
    assert [(j.index, j.prompt, j.error) for j in jobs] == [
        (0, "first prompt", None), (1, "  {not json, a plain line}", None), (2, "", "the prompt is empty"),
        (3, "last", None)]
    assert all(j.config is BASE for j in jobs if j.error is None)


def test_a_final_newline_does_not_add_a_prompt_and_an_empty_file_has_none() -> None:
    assert len(parse("a\nb\n", BASE)) == 2
    assert parse("", BASE) == [] and parse("\n", BASE)[0].error == "the prompt is empty"


def test_json_lines_carry_id_system_and_decoding_keys_over_the_command_line() -> None:
    jobs = parse('\n{"prompt": "p", "id": "x", "system": "be brief", "max-new-tokens": 5, "greedy": true}\n'
                 '{"prompt": "q", "seed": 3, "stop": "."}', BASE)
    assert jobs[0].error == "the line is empty"
    first, second = jobs[1], jobs[2]
    assert (first.prompt, first.id, first.system) == ("p", "x", "be brief")
    assert first.config == BASE.replace(max_new_tokens=5, temperature=0.0) and first.config.greedy
    assert second.config == BASE.replace(seed=3, stop=(".",)) and second.own_seed and not first.own_seed


def test_each_bad_json_line_gets_its_own_one_line_error() -> None:
    lines = ['{"prompt": "ok"}', '{"prompt": 3}', '{"prompt": "p", "top_p": 2}', '{"prompt": "p", "n": 2}',
             '{"prompt": "p", "num_return_sequences": 4}', '{"prompt": "p", "num_beams": 2}',
             '{"prompt": "p", "id": [1]}', '{"prompt": "p", "system": 1}', '"just a string"', '{"prompt": "p",']
    jobs = parse("\n".join(lines), BASE)
    assert jobs[0].error is None
    errors = [j.error for j in jobs[1:]]
    assert all(e and "\n" not in e for e in errors), errors
    assert 'no "prompt" string' in errors[0] and "top-p" in errors[1]
    assert all("n > 1 or beam search" in e for e in errors[2:5])
    assert "invalid id" in errors[5] and "invalid system" in errors[6] and "object" in errors[7]
    assert "invalid JSON" in errors[8]
