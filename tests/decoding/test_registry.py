"""The stage records (`processors/registry.py`): every list, flag and docs row is derived from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from llmgen.decoding.config import DecodingConfig, stage_options
from llmgen.decoding.processors.chain import compile_chain
from llmgen.decoding.processors.registry import (
    LLAMACPP_ORDER,
    NAMED_ORDERS,
    STAGE_ALIASES,
    STAGE_NAMES,
    STAGES,
    TRUNCATIONS,
    WARPERS,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "samplers.md"


def test_the_derived_lists_are_the_chain_as_documented() -> None:
    assert STAGE_NAMES == ("penalties", "dry", "top_n_sigma", "temperature", "top_k", "typical_p", "top_p", "min_p",
                           "epsilon", "eta", "xtc", "mirostat")
    assert LLAMACPP_ORDER == ("penalties", "dry", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc",
                              "temperature", "mirostat")
    assert WARPERS == set(STAGE_NAMES) - {"penalties", "dry"}
    assert TRUNCATIONS == {"top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta", "mirostat"}
    assert STAGE_ALIASES["typ_p"] == "typical_p" and STAGE_ALIASES["mirostat_v2"] == "mirostat"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_a_stage_is_on_exactly_when_a_switch_leaves_its_off_value(stage) -> None:
    assert not DecodingConfig().stages_on[stage.name]
    for name, off in stage.switches.items():
        on = {"top_k": 5, "mirostat": 2, "repetition_penalty": 1.2, "top_p": 0.9, "typical_p": 0.9,
              "temperature": 0.7}.get(name, 0.5)
        config = DecodingConfig(**{name: on})
        assert config.stages_on[stage.name] and stage.on(config) and config.replace(**{name: off}).stages_on == \
            DecodingConfig().stages_on


def test_the_chain_binds_only_the_stages_that_run() -> None:
    chain = compile_chain(DecodingConfig(top_k=3, repetition_penalty=1.2), 13)
    assert [link.stage.name for link in chain.links if link.step is not None] == ["penalties", "top_k"]
    assert compile_chain(DecodingConfig(top_k=13), 13).links[STAGE_NAMES.index("top_k")].step is None  # k >= vocab
    greedy = compile_chain(DecodingConfig(temperature=0, top_p=0.5, dry_multiplier=0.5), 13)
    assert [link.stage.name for link in greedy.links if link.step is not None] == ["dry"]  # no warper in greedy
    assert compile_chain(DecodingConfig(top_p=0.5), 13) is compile_chain(DecodingConfig(top_p=0.5), 13)  # compiled once
    logits = torch.randn(2, 13)
    top3 = logits.masked_fill(logits < torch.topk(logits, 3).values[:, -1:], float("-inf"))
    assert torch.equal(chain(logits, torch.zeros(2, 13)), top3)  # no token seen: the penalties change nothing


def test_docs_name_every_stage_in_order_with_its_flags() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, order in NAMED_ORDERS.items():
        assert f"| `{name}` | `{';'.join(order)}` |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| [a-z_]+ \| `--", line)]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(STAGE_NAMES)
    for stage, row in zip(STAGES, rows):
        for flag, _, _ in stage_options(stage):
            assert re.search(f"`{re.escape(flag)}[ `]", row), (stage.name, flag)
