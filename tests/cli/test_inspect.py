"""`llmgen inspect`: its stages are the chain decoding runs (the last one is `processors.distribution`,
each one matches HF's processor where HF has it), and the command's JSON, steps, plot and errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmgen.decoding import processors
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.inspection import view_stages

VOCAB = 97
NAMES = ["raw", "penalties", "temperature", "top_k", "top_p", "min_p"]
CONFIGS = [
    DecodingConfig(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3, penalty_scope="all"),
    DecodingConfig(temperature=1.4, top_p=0.8),
    DecodingConfig(top_k=5),
    DecodingConfig(min_p=0.2, temperature=0.5),
]


def logits_and_context(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, generator=gen) * 3, torch.randint(0, VOCAB, (30,), generator=gen)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", range(3))
def test_last_stage_is_the_distribution_decoding_samples_from(config, seed) -> None:
    logits, context = logits_and_context(seed)
    counts = processors.token_counts(context.tolist(), VOCAB)
    views = view_stages(logits, counts, config)
    assert [v.name for v in views] == NAMES
    expected = processors.distribution(logits[None], counts[None], config)[0]
    assert torch.equal(views[-1].probs, expected)
    assert views[-1].kept == int((expected > 0).sum())


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("seed", range(3))
def test_each_stage_matches_hfs_processor(config, seed) -> None:
    logits, context = logits_and_context(seed)
    counts = processors.token_counts(context.tolist(), VOCAB)
    views = view_stages(logits, counts, config)
    hf = logits[None].clone()
    chain = [RepetitionPenaltyLogitsProcessor(config.repetition_penalty) if config.repetition_penalty != 1 else None,
             TemperatureLogitsWarper(config.temperature) if config.temperature != 1 else None,
             TopKLogitsWarper(config.top_k) if config.top_k else None,
             TopPLogitsWarper(config.top_p) if config.top_p < 1 else None,
             MinPLogitsWarper(config.min_p) if config.min_p else None]
    for view, processor in zip(views[1:], chain):
        if processor is not None:
            hf = processor(context[None], hf)
        assert view.on == (processor is not None)
        torch.testing.assert_close(view.logits, hf[0])
        torch.testing.assert_close(view.probs, hf[0].softmax(-1))


def test_stages_that_are_off_change_nothing_and_greedy_turns_the_warpers_off() -> None:
    logits, _ = logits_and_context(7)
    views = view_stages(logits, None, DecodingConfig(temperature=0, top_k=3))
    assert [v.on for v in views] == [True, False, False, False, False, False]
    assert all(torch.equal(v.logits, views[0].logits) for v in views)
    p = views[0].probs
    assert views[0].entropy == pytest.approx(float(-(p * p.log2()).sum()), abs=1e-5)
    assert views[0].kept == VOCAB


def test_json_schema_steps_and_continue(capsys, char_model) -> None:
    base = ("inspect", "-m", str(char_model), "--raw", "--greedy", "--top", "4", "--json", "--ignore-eos")
    code, out, _ = run(capsys, *base, "--steps", "3", "abc")
    assert code == 0
    steps = [json.loads(line) for line in out.splitlines()]
    assert [s["position"] for s in steps] == [3, 4, 5]
    for step in steps:
        assert set(step) == {"position", "chosen", "stages"}
        assert [s["name"] for s in step["stages"]] == NAMES
        for stage in step["stages"]:
            assert {"name", "kept", "entropy", "top"} <= set(stage)
            assert len(stage["top"]) == 4 and set(stage["top"][0]) == {"id", "token", "prob"}
        assert step["chosen"]["id"] == step["stages"][-1]["top"][0]["id"]  # greedy: the argmax
    # greedy steps are what generate --greedy writes
    _, gen, _ = run(capsys, "generate", "-m", str(char_model), "--raw", "--greedy", "-N", "3", "--ignore-eos",
                    "--json", "abc")
    assert [s["chosen"]["id"] for s in steps] == json.loads(gen)["token_ids"]
    # --continue moves to the position after the forced text
    code, out, _ = run(capsys, *base, "--continue", "".join(s["chosen"]["token"] for s in steps[:2]), "abc")
    after = json.loads(out)
    assert after["position"] == 5 and after["chosen"]["id"] == steps[2]["chosen"]["id"]
    for got, expected in zip(after["stages"], steps[2]["stages"]):  # one prefill vs steps: fp32 rounding only
        assert [t["id"] for t in got["top"]] == [t["id"] for t in expected["top"]]
        assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in expected["top"]], abs=1e-5)


def test_table_lists_every_stage_and_marks_the_off_ones(capsys, char_model) -> None:
    code, out, _ = run(capsys, "inspect", "-m", str(char_model), "--raw", "--top-k", "3", "--seed", "1", "abc")
    assert code == 0
    for name in NAMES:
        assert name in out
    assert "(off)" in out and "kept" in out and "entropy" in out and "cut" in out


def test_sampled_steps_follow_the_seed(capsys, char_model) -> None:
    args = ("inspect", "-m", str(char_model), "--raw", "--temperature", "1.5", "--steps", "4", "--json",
            "--ignore-eos", "abc")
    first = [json.loads(x)["chosen"]["id"] for x in run(capsys, *args, "--seed", "3")[1].splitlines()]
    again = [json.loads(x)["chosen"]["id"] for x in run(capsys, *args, "--seed", "3")[1].splitlines()]
    assert first == again and len(first) == 4


def test_plot_writes_a_png(capsys, char_model, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "stages.png"
    code, _, _ = run(capsys, "inspect", "-m", str(char_model), "--raw", "--top-p", "0.8", "--plot", str(path), "abc")
    assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("argv", "needle"), [
    (("--num-beams", "2"), "drop --num-beams"),
    (("--steps", "300"), "--steps 300"),
    (("--plot", "x.svg"), "must end in .png"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, char_model, argv, needle) -> None:
    code, _, err = run(capsys, "inspect", "-m", str(char_model), "--raw", *argv, "abc")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
