"""Beam search at the command line, and the pure pieces of `llmgen.decoding.beam` on hand-made tensors."""

from __future__ import annotations

import io
import json

import pytest
import torch
from helpers import run
from rich.console import Console
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from llmgen.decoding import beam
from llmgen.decoding.beam import FinishedSet, Hypothesis, block_repeated_ngrams, can_improve
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.counts import penalty_counts
from llmgen.errors import UsageError

# ---------------------------------------------------------------------------------------------
# Bad combinations: one line on stderr, exit code 2.


@pytest.mark.parametrize("args,message", [
    (["--num-beams", "2", "-n", "3"], "-n/--num-return-sequences (3) cannot exceed --num-beams (2)"),
    (["--num-beams", "4", "--top-p", "0.9"], "--top-p cannot be combined with --num-beams"),
    (["--num-beams", "4", "--top-k", "5"], "--top-k cannot be combined with --num-beams"),
    (["--num-beams", "4", "--min-p", "0.1"], "--min-p cannot be combined with --num-beams"),
    (["--num-beams", "4", "--temperature", "0.7"], "beam search is deterministic (there is no beam sampling)"),
    (["--no-repeat-ngram-size", "2"], "--no-repeat-ngram-size needs beam search"),
    (["--length-penalty", "2"], "--length-penalty needs beam search"),
    (["--early-stopping", "true"], "--early-stopping needs beam search"),
    (["--num-beams", "2", "--early-stopping", "maybe"], "early-stopping: 'maybe' must be 'false', 'true' or 'never'"),
    (["--num-beams", "0"], "num-beams: 0 must be >= 1"),
])
def test_bad_combinations_are_refused(capsys, char_model, args, message) -> None:
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", *args, "abc")
    assert code == 2 and out == ""
    assert err.startswith("llmgen: error: ") and message in err and err.count("\n") == 1


def test_refuse_beams_for_commands_without_beam_search() -> None:
    with pytest.raises(UsageError, match="--num-beams cannot be combined with speculate"):
        beam.refuse_beams("speculate", DecodingConfig(num_beams=3))
    beam.refuse_beams("speculate", DecodingConfig())


def test_greedy_flags_are_allowed_and_preset_sampling_is_ignored_with_a_note(capsys, char_model) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "2", "--greedy",
                       "-N", "4", "-q", "abc")
    assert code == 0 and err == ""
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "2", "-p", "balanced",
                         "-N", "4", "-q", "abc")
    assert code == 0 and out
    assert "beam search ignores temperature = 0.7 from preset balanced" in err
    assert "beam search ignores top_p = 0.9 from preset balanced" in err


def test_help_says_there_is_no_beam_sampling(capsys) -> None:
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    for flag in ("--num-beams", "--length-penalty", "--early-stopping", "--no-repeat-ngram-size"):
        assert flag in flat
    assert "no beam sampling" in flat


def test_dump_config_shows_beam_settings(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "--num-beams", "4", "--length-penalty", "0.5", "--dump-config")
    assert code == 0
    assert "num_beams = 4  # flag" in out and "length_penalty = 0.5  # flag" in out
    assert 'early_stopping = "false"  # default' in out


# ---------------------------------------------------------------------------------------------
# Output: only final texts without a terminal; one JSON object per hypothesis with its score.


def test_json_gives_the_k_best_hypotheses_with_scores(capsys, char_model, char_lm) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "4", "-n", "3",
                       "-N", "12", "--json", "bead")
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    ids = char_lm.tokenizer("bead")["input_ids"]
    config = DecodingConfig(num_beams=4, n=3, max_new_tokens=12)
    expected = beam.beam_search(char_lm.engine, ids, config, char_lm.eos_token_ids, 12).hypotheses[:3]
    assert [o["token_ids"] for o in objects] == [h.token_ids for h in expected]
    assert [o["score"] for o in objects] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert [o["score"] for o in objects] == sorted((o["score"] for o in objects), reverse=True)
    assert all(o["prompt_token_ids"] == ids and o["stats"]["num_beams"] == 4 for o in objects)


def test_without_a_terminal_only_the_final_texts_are_printed(capsys, char_model) -> None:
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "3", "-n", "2",
                         "-N", "10", "abc")
    assert code == 0
    code_json, out_json, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "3", "-n", "2",
                                 "-N", "10", "--json", "abc")
    texts = [json.loads(line)["text"] for line in out_json.splitlines()]
    assert out == "\n\n".join(texts) + "\n"  # as generate -n: a blank line between sequences
    assert err.count("beam score") == 2 and "best:" not in err  # statistics, no progress display


def test_a_stop_string_finishes_a_beam(capsys, char_model) -> None:
    code, out, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--num-beams", "3", "-n", "3",
                       "--stop", "gg", "-N", "30", "--json", "abc")
    assert code == 0
    objects = [json.loads(line) for line in out.splitlines()]
    assert len(objects) == 3
    for o in objects:
        assert "gg" not in o["text"]
        assert o["finish_reason"] in ("stop", "eos", "length")
    assert any(o["finish_reason"] == "stop" for o in objects)


def test_progress_shows_the_step_and_the_best_partial_hypothesis(monkeypatch, char_lm) -> None:
    from llmgen.cli import output

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    monkeypatch.setattr(output, "stderr_console", lambda: console)
    with output.beam_progress(char_lm.tokenizer, enabled=True) as show:
        assert show is not None
        show(3, 1, char_lm.tokenizer("bad cafe")["input_ids"])
    assert "step 3" in buffer.getvalue() and "bad cafe" in buffer.getvalue()
    with output.beam_progress(char_lm.tokenizer, enabled=False) as show:
        assert show is None


# ---------------------------------------------------------------------------------------------
# Pure pieces.


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_blocking_equals_hf(n) -> None:
    generator = torch.Generator().manual_seed(n)
    seqs = torch.randint(0, 5, (6, 17), generator=generator)  # a small alphabet: many repeats
    log_probs = torch.randn(6, 7, generator=generator).log_softmax(-1)
    expected = NoRepeatNGramLogitsProcessor(n)(seqs, log_probs.clone())
    torch.testing.assert_close(block_repeated_ngrams(log_probs, seqs, n), expected)


def test_ngram_blocking_by_hand() -> None:
    seqs = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 4, 2]])
    blocked = block_repeated_ngrams(torch.zeros(2, 6), seqs, 3)
    assert torch.isinf(blocked[0]).nonzero().flatten().tolist() == [3]  # "1 2" was followed by 3
    assert not torch.isinf(blocked[1]).any()  # "4 2" never appeared before


def test_each_beam_counts_only_its_own_tokens() -> None:
    prompt = [0, 0]
    beams = [(prompt, [3, 3, 4]), (prompt, [5, 5, 5])]  # one row per beam, as beam_log_probs builds them
    on = {"repetition_penalty": 1.2}
    generated = penalty_counts(beams, DecodingConfig(**on), 6)
    assert generated.tolist() == [[0, 0, 0, 2, 1, 0], [0, 0, 0, 0, 0, 3]]
    everything = penalty_counts(beams, DecodingConfig(penalty_scope="all", **on), 6)
    assert everything[:, 0].tolist() == [2, 2]
    window = penalty_counts(beams, DecodingConfig(penalty_window=2, **on), 6)
    assert window.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 2]]
    assert penalty_counts(beams, DecodingConfig(), 6) is None  # no penalty: nothing is counted


def test_penalties_act_on_log_probs_per_beam() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    seqs = torch.tensor([[0, 0], [0, 1]])  # prompt [0], then beam 0 said 0, beam 1 said 1
    config = DecodingConfig(repetition_penalty=2.0, num_beams=2)
    out = beam.beam_log_probs(logits, seqs, 1, config)
    lp = logits.log_softmax(-1).tolist()
    assert out[0].tolist() == pytest.approx([lp[0][0] * 2, lp[0][1], lp[0][2]])  # a log-prob is <= 0: times R
    assert out[1].tolist() == pytest.approx([lp[1][0], lp[1][1] * 2, lp[1][2]])


def test_finished_set_keeps_the_best_b_best_first() -> None:
    finished = FinishedSet(2)
    assert not finished.full and finished.worst() == beam.DEAD
    for score in (-3.0, -1.0, -2.0, -0.5):
        finished.add(Hypothesis([1], score, "eos"))
    assert [h.score for h in finished.items] == [-0.5, -1.0] and finished.worst() == -1.0


@pytest.mark.parametrize("early,penalty,expected", [
    ("false", 1.0, False),  # -12 / 4 = -3 < -2.5: the heuristic at the current length says no
    ("true", 1.0, False),
    ("never", 1.0, True),  # -12 / 10 = -1.2 > -2.5: at the full length it might still win
    ("never", 0.0, False),  # no length penalty: scores only fall, -12 < -2.5
    ("never", -1.0, False),  # a negative penalty: the current length is the best case
])
def test_can_improve(early, penalty, expected) -> None:
    finished = FinishedSet(2)
    for score in (-1.0, -2.5):
        finished.add(Hypothesis([1], score, "eos"))
    config = DecodingConfig(num_beams=2, early_stopping=early, length_penalty=penalty)
    assert can_improve(-12.0, finished, 4, 10, config) is expected
    assert can_improve(-12.0, FinishedSet(2), 4, 10, config)  # not full: always
