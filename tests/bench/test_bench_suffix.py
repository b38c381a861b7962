"""The bench's suffix row: one store across its runs (run j drafts from runs 1..j-1), a fresh one when a
prompt comes round again, so no run drafts from its own earlier output; the rewrite set is built in."""

from __future__ import annotations

from pathlib import Path

from llmgen.bench import contenders as cs
from llmgen.bench import prompts
from llmgen.decoding.config import DecodingConfig
from llmgen.loading import models

GREEDY = DecodingConfig(temperature=0, max_new_tokens=16, ignore_eos=True)


def test_the_suffix_row_keeps_its_store_across_prompts_and_starts_afresh_on_a_repeat(char_model: Path) -> None:
    loaded = models.load(str(char_model))
    a = loaded.tokenizer("abc abc ab")["input_ids"]
    row = cs.speculative(loaded, GREEDY, None, 4, "suffix", suffix=True)
    assert row.strategy == "suffix"
    first = row.run_once(a)
    b = a + first.token_ids[:3]  # greedy: b's output is the rest of a's, which the store holds
    second, again = row.run_once(b), row.run_once(a)
    alone = cs.speculative(loaded, GREEDY, None, 4, "suffix", suffix=True).run_once(b)
    assert second.token_ids == alone.token_ids  # the store changes the speed, never the tokens
    assert second.extra["accepted_tokens"] > alone.extra["accepted_tokens"]
    # a's second run starts a fresh store: it does what a's first run did
    assert (again.extra["draft_tokens"], again.extra["accepted_tokens"]) == \
        (first.extra["draft_tokens"], first.extra["accepted_tokens"])


def test_the_rewrite_set_is_sixteen_jobs_of_one_document() -> None:
    jobs = prompts.load("rewrite").prompts
    assert len(jobs) == 16
    assert len({job.split("\n\n", 1)[1] for job in jobs}) == 1
    assert len({job.split("\n\n", 1)[0] for job in jobs}) == 16
