"""Constrained output (`constraints.py`): every output valid, exact greedy under speculative decoding,
bad input refused in one line. Runs on the tiny llama over the SmolLM2 tokenizer (`wide_model`: random
weights, so the grammar does all the work) and, with short budgets, on the embedded SmolLM2.

Skipped without the `constrained` extra (llguidance, jsonschema), except the test that says how to get it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import one_line_error as assert_one_line_error
from helpers import run

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import stages

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "none"]},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                 "required": ["city"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1, "maxItems": 2},
    },
    "required": ["name", "age", "pet", "home", "tags"],
    "additionalProperties": False,
}
REGEX = r"(cat|dog|bird)-[0-9]{2,3}( [a-z]{1,4})?"


def llguidance_required() -> None:
    pytest.importorskip("llguidance")


def json_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.split("\n") if line.strip()]  # NOTE: not splitlines(): U+2028 may be in a text


# --- the mask in the chain ------------------------------------------------------------------------

def test_the_mask_is_the_first_stage_so_truncation_sees_allowed_tokens_only() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    allowed = torch.tensor([[False, False, True, True, True]])
    config = DecodingConfig(top_k=1, repetition_penalty=2.0)
    out = stages(logits, torch.zeros(1, 5), config, allowed)
    assert [s.name for s in out][:3] == ["raw", "mask", "penalties"]
    final = out[-1].logits[0]
    assert final.isfinite().tolist() == [False, False, True, False, False]  # top-k=1 kept the best *allowed*
    assert [s.name for s in stages(logits, None, config)][1] == "penalties"  # no constraint, no mask stage


def test_without_llguidance_the_options_say_how_to_install_it(capsys, char_model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import llguidance now raises ImportError
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--regex", "ab", "abc")
    assert code == 2
    assert_one_line_error(err, "pip install 'llmgen[constrained]'")


# --- the matcher ------------------------------------------------------------------------------------

def test_the_matcher_rolls_back_to_exactly_the_earlier_mask(wide_model: Path) -> None:
    llguidance_required()
    from llmgen.decoding.constraints import new_matcher
    from llmgen.loading import models

    loaded = models.load(str(wide_model))
    matcher = new_matcher(DecodingConfig(regex=REGEX), loaded)
    eos = next(iter(loaded.eos_token_ids))
    tokens = loaded.tokenizer("dog-12 ab")["input_ids"]
    masks = []
    for token in tokens:
        masks.append(matcher.allowed())
        assert bool(masks[-1][token])
        matcher.advance(token)
    complete = matcher.allowed()
    assert bool(complete[eos])  # "dog-12 ab" matches, and could go on ("abc")
    matcher.advance(eos)
    assert matcher.allowed().nonzero().flatten().tolist() == [eos]  # after the end: end only
    matcher.advance(tokens[0])  # a draft may hold tokens past the end; they are only counted
    matcher.rollback(2)
    assert torch.equal(matcher.allowed(), complete)
    matcher.rollback(len(tokens) - 1)
    assert torch.equal(matcher.allowed(), masks[1])
    assert not bool(masks[0][eos])  # the empty output does not match


# --- every output valid -----------------------------------------------------------------------------

def test_200_schema_samples_parse_and_validate(capsys, wide_model: Path, tmp_path: Path) -> None:
    llguidance_required()
    jsonschema = pytest.importorskip("jsonschema")
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--schema", str(schema), "-n", "200",
                         "--seed", "7", "-t", "1.0", "--top-p", "1.0", "-N", "160", "--json", "-q", "A person:")
    assert code == 0, err
    rows = json_rows(out)
    assert len(rows) == 200
    for row in rows:
        assert row["finish_reason"] == "stop", row["text"]
        jsonschema.validate(json.loads(row["text"]), SCHEMA)
    assert len({row["text"] for row in rows}) > 150  # each row its own matcher and its own draws


def test_200_regex_samples_match_with_penalties(capsys, wide_model: Path) -> None:
    llguidance_required()
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--regex", REGEX, "-n", "200",
                         "--seed", "3", "--presence-penalty", "0.5", "--top-p", "0.95", "-N", "24", "--json", "-q",
                         "Pet:")
    assert code == 0, err
    rows = json_rows(out)
    assert len(rows) == 200
    assert all(row["finish_reason"] == "stop" and re.fullmatch(REGEX, row["text"]) for row in rows), rows[:3]


@pytest.mark.parametrize("draft", ["ngram", "small"])
def test_speculative_samples_are_valid(capsys, wide_model: Path, wide_draft: Path, draft: str) -> None:
    llguidance_required()
    jsonschema = pytest.importorskip("jsonschema")
    draft_ref = "ngram" if draft == "ngram" else str(wide_draft)
    code, out, err = run(capsys, "speculate", "-m", str(wide_model), "--draft", draft_ref, "--raw",
                         "--schema", json.dumps(SCHEMA), "-n", "6", "--seed", "5", "-N", "160", "--json", "-q",
                         '{"name": "Al", "age": 3, "pet": "cat", "home": {"city": "Oslo"}, "tags": ["a"]}')
    assert code == 0, err
    for row in json_rows(out):
        assert row["finish_reason"] == "stop"
        jsonschema.validate(json.loads(row["text"]), SCHEMA)
    code, out, err = run(capsys, "speculate", "-m", str(wide_model), "--draft", draft_ref, "--raw",
                         "--regex", REGEX, "-n", "6", "--seed", "5", "-N", "24", "--json", "-q", "dog-12 dog-12 dog")
    assert code == 0, err
    assert all(re.fullmatch(REGEX, row["text"]) for row in json_rows(out))


@pytest.mark.parametrize("draft", ["ngram", "small"])
def test_speculative_greedy_with_a_constraint_equals_plain_constrained_greedy(capsys, wide_model: Path,
                                                                             wide_draft: Path, draft: str) -> None:
    llguidance_required()
    prompt = 'A person: {"name": "Al", "age": 3, "pet": "cat", "home": {"city": "Oslo"}, "tags": ["a", "b"]}. Another:'
    common = ["-m", str(wide_model), "--raw", "--greedy", "--schema", json.dumps(SCHEMA), "-N", "160", "--json",
              "-q", "--repetition-penalty", "1.2"]
    code, out, err = run(capsys, "generate", *common, prompt)
    assert code == 0, err
    plain = json_rows(out)[0]
    code, out, err = run(capsys, "speculate", *common, "--draft", "ngram" if draft == "ngram" else str(wide_draft),
                         "--gamma", "4", prompt)
    assert code == 0, err
    spec = json_rows(out)[0]
    assert spec["token_ids"] == plain["token_ids"] and spec["finish_reason"] == plain["finish_reason"] == "stop"


def test_choice_and_json_object_on_the_embedded_model(capsys, embedded_dir: Path) -> None:
    llguidance_required()
    code, out, err = run(capsys, "generate", "--choice", "yes", "--choice", "no", "-n", "3", "--seed", "1",
                         "-N", "8", "--json", "-q", "Is the sky blue? Answer yes or no.")
    assert code == 0, err
    assert all(row["text"] in ("yes", "no") and row["finish_reason"] == "stop" for row in json_rows(out))
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
              "required": ["city", "population"], "additionalProperties": False}
    code, out, err = run(capsys, "generate", "--schema", json.dumps(schema), "--greedy", "-N", "40", "--json", "-q",
                         "The largest city of France, as JSON:")
    assert code == 0, err
    row = json_rows(out)[0]
    assert row["finish_reason"] == "stop"
    value = json.loads(row["text"])
    assert set(value) == {"city", "population"} and isinstance(value["population"], int)


def test_beam_search_with_a_constraint_forks_a_matcher_per_beam(capsys, wide_model: Path) -> None:
    llguidance_required()
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--num-beams", "4", "-n", "4",
                         "--regex", REGEX, "-N", "24", "--json", "-q", "Pet:")
    assert code == 0, err
    rows = json_rows(out)
    assert len(rows) == 4 and len({row["text"] for row in rows}) == 4
    assert all(row["finish_reason"] == "stop" and re.fullmatch(REGEX, row["text"]) for row in rows), rows
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    choices = ["yes", "no", "maybe"]
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--num-beams", "3", "-n", "3",
                         *(a for c in choices for a in ("--choice", c)), "-N", "8", "--json", "-q", "Well?")
    assert code == 0, err
    rows = json_rows(out)
    assert all(row["text"] in choices for row in rows)  # NOTE: one choice may come twice, spelled with other tokens
    assert len({tuple(row["token_ids"]) for row in rows}) == 3


def test_a_budget_that_ends_first_gives_length_and_one_warning(capsys, wide_model: Path) -> None:
    llguidance_required()
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--schema", json.dumps(SCHEMA),
                         "--seed", "1", "-N", "3", "--json", "-q", "x")
    assert code == 0
    assert json_rows(out)[0]["finish_reason"] == "length"
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--schema" in warnings[0] and "may not parse" in warnings[0]


# --- bad input: one line, exit 2 ----------------------------------------------------------------------

@pytest.mark.parametrize("args,needles", [
    (["--schema", '{"type": "object",'], ["--schema", "not valid JSON", "line 1"]),
    (["--schema", '{"type": "frob"}'], ["--schema", "frob"]),
    (["--schema", '{"type": "object", "properties": {"a": {"$dynamicRef": "#x"}}}'], ["$dynamicRef"]),
    (["--schema", "no-such-schema.json"], ["--schema", "no such file"]),
    (["--regex", "(ab"], ["--regex", "unclosed group"]),
    (["--regex", ""], ["regex", "non-empty"]),
    (["--regex", "[a&&b]"], ["--regex", "no token of the vocabulary can start"]),
    (["--regex", "a", "--choice", "b"], ["one constraint at a time", "--regex", "--choice"]),
    (["--json-object", "--ignore-eos"], ["--json-object", "--ignore-eos"]),
])
def test_bad_constraints_are_one_line_and_exit_2(capsys, wide_model: Path, args: list[str],
                                                 needles: list[str]) -> None:
    llguidance_required()
    code, _, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "-N", "4", *args, "x")
    assert code == 2
    assert_one_line_error(err, *needles)


@pytest.mark.parametrize("command", [["inspect"], ["bench"], ["generate", "--backend", "vllm"]])
def test_commands_that_cannot_apply_a_constraint_refuse_it(capsys, wide_model: Path, command: list[str]) -> None:
    llguidance_required()
    code, _, err = run(capsys, *command, "-m", str(wide_model), "--regex", "a+", *(["x"] if command != ["bench"] else []))
    assert code == 2
    assert_one_line_error(err, "constraint")


def test_a_grammar_syntax_error_names_the_line(capsys, wide_model: Path, tmp_path: Path) -> None:
    llguidance_required()
    grammar = tmp_path / "bad.lark"
    grammar.write_text('start: item+\nitem: "a" ( "b"\n')
    code, _, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--grammar", str(grammar), "x")
    assert code == 2
    assert_one_line_error(err, "--grammar", "2(")
    good = tmp_path / "yes.gbnf"
    good.write_text('root ::= "yes" | "no"\n')
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--grammar", str(good), "--json",
                         "-q", "-N", "4", "x")
    assert code == 0, err
    assert json_rows(out)[0]["text"] in ("yes", "no")


def test_a_preset_carries_a_constraint(capsys, wide_model: Path, tmp_path: Path) -> None:
    llguidance_required()
    preset = tmp_path / "pets.toml"
    preset.write_text(f"regex = {json.dumps(REGEX)}\ntemperature = 0.7\n")
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--preset", str(preset), "-n", "3",
                         "--seed", "2", "-N", "24", "--json", "-q", "Pet:")
    assert code == 0, err
    assert all(re.fullmatch(REGEX, row["text"]) for row in json_rows(out))
    table = tmp_path / "person.toml"
    table.write_text('[schema]\ntype = "object"\nrequired = ["a"]\nadditionalProperties = false\n'
                     '[schema.properties.a]\ntype = "integer"\nmaximum = 9\nminimum = 0\n')
    code, out, err = run(capsys, "generate", "-m", str(wide_model), "--raw", "--preset", str(table), "-N", "24",
                         "--seed", "1", "--json", "-q", "x")
    assert code == 0, err
    assert set(json.loads(json_rows(out)[0]["text"])) == {"a"}


@pytest.fixture(scope="module")
def wide_draft(tmp_path_factory: pytest.TempPathFactory, wide_model: Path) -> Path:
    """Another tiny llama over the SmolLM2 tokenizer, with other weights: a draft that is often wrong."""
    from tiny_models import build_llama
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("wide-draft")
    tokenizer = AutoTokenizer.from_pretrained(wide_model)
    tokenizer.save_pretrained(path)
    build_llama(path, len(tokenizer), seed=4, hidden=32, layers=1, context=512,
                bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)
    return path
