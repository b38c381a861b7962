"""The statistics helpers of the benchmark: summaries, the interleaved schedule, distinct-n, prompt files,
and the speedup formulas."""

from __future__ import annotations

import pytest

from llmgen.bench import prompts
from llmgen.bench.runner import expected_tokens_per_forward, predicted_speedup
from llmgen.bench.stats import PeakMemory, Slot, distinct_n, quality, repeated_ngram_rate, schedule, summarize
from llmgen.errors import UsageError


def test_summary_is_median_min_max() -> None:
    s = summarize([3.0, 1.0, 10.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 10.0, 5)
    assert summarize([1.0, 2.0, 3.0, 4.0]).median == 2.5  # even count: the mean of the middle two


def test_summary_skips_missing_values() -> None:
    assert summarize([]) is None
    assert summarize([None, None]) is None
    assert summarize([None, 5.0]).median == 5.0


def test_schedule_warms_up_then_interleaves() -> None:
    slots = schedule(configs=2, runs=3, warmup=1)
    assert [(s.config, s.run, s.warmup) for s in slots] == [
        (0, 0, True), (1, 0, True),  # warm-up of every configuration first
        (0, 0, False), (1, 0, False), (0, 1, False), (1, 1, False), (0, 2, False), (1, 2, False),  # A B A B A B
    ]


def test_schedule_without_warmup_and_bad_sizes() -> None:
    assert schedule(3, 1, 0) == [Slot(0, 0, False), Slot(1, 0, False), Slot(2, 0, False)]
    with pytest.raises(ValueError):
        schedule(0, 1)
    with pytest.raises(ValueError):
        schedule(1, 0)


def test_distinct_n_of_a_loop_and_of_fresh_text() -> None:
    loop = [1, 2, 3] * 4  # "Day 1: Lisbon... Day 2: Lisbon..."
    assert distinct_n(loop, 2) == pytest.approx(3 / 11)
    assert distinct_n(loop, 3) == pytest.approx(3 / 10)
    assert repeated_ngram_rate(loop, 3) == pytest.approx(7 / 10)
    fresh = list(range(12))
    assert distinct_n(fresh, 2) == 1.0
    assert repeated_ngram_rate(fresh) == 0.0


def test_distinct_n_of_short_text_is_undefined() -> None:
    assert distinct_n([1, 2], 3) is None
    assert quality([7]) == {"distinct_2": None, "distinct_3": None, "repeated_3gram_rate": None}


def test_peak_memory_sees_an_allocation() -> None:
    import numpy as np

    with PeakMemory("cpu", interval=0.001) as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block.sum()
    assert memory.peak >= block.nbytes


def test_expected_tokens_per_forward_and_predicted_speedup() -> None:
    assert expected_tokens_per_forward(0.0, 4) == 1.0  # every draft token rejected: one token per forward
    assert expected_tokens_per_forward(1.0, 4) == 5.0  # all accepted, plus the bonus
    assert expected_tokens_per_forward(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # E / (γ·c + v): a free draft (c = 0) and a free verification (v = 1) give E itself.
    assert predicted_speedup(0.5, 2, 0.0, 1.0) == pytest.approx(1.75)
    assert predicted_speedup(0.8, 4, 0.5, 2.0) == pytest.approx(expected_tokens_per_forward(0.8, 4) / 4.0)


def test_builtin_prompt_sets_have_enough_prompts() -> None:
    for name in prompts.BUILTIN_SETS:
        loaded = prompts.load(name)
        assert len(loaded.prompts) >= 8, name
        assert all(p.strip() for p in loaded.prompts)
    assert prompts.load("open")[10] == prompts.load("open")[0]  # cycles past the end


def test_prompt_file_lines_and_jsonl(tmp_path) -> None:
    lines = tmp_path / "mine.txt"
    lines.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    assert prompts.load(str(lines)).prompts == ("first prompt", "second prompt")
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "a\\nmulti-line prompt"}\n{"prompt": "b"}\n', encoding="utf-8")
    assert prompts.load(str(jsonl)).prompts == ("a\nmulti-line prompt", "b")


@pytest.mark.parametrize("text, message", [
    ("", "no prompts"),
    ('{"prompt": "ok"}\n{"text": "no prompt key"}\n', ':2: each JSON line needs a non-empty "prompt"'),
    ('{"prompt": "ok"}\n{broken\n', ":2: not a JSON object"),
])
def test_bad_prompt_files(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        prompts.load(str(path))


def test_unknown_prompt_set() -> None:
    with pytest.raises(UsageError, match="neither a built-in set"):
        prompts.load("no-such-set")
