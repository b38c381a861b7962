"""Reasoning controls: template switches, the reasoning budget, and `reasoning` apart from `text`.

A tiny tokenizer: the char vocabulary plus "<think>" and "</think>" as tokens, with a template that
honours `enable_thinking` as Qwen3's does (false: an empty think block is written into the prompt).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run
from tiny_models import build_llama

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.processors.tables import build_tables
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.sequence import SequenceResult, encode_prompt, split_reasoning

TEMPLATE = (
    "{% for m in messages %}h {{ m['content'] }}.{% endfor %}{% if add_generation_prompt %}a "
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}"
)


def thinking_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list("abcdefgh .")
    vocab = {tok: i for i, tok in enumerate(["<s>", "</s>", "<unk>", *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="</s>")
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def thinking_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("thinking")
    tokenizer = thinking_tokenizer(path)
    build_llama(path, len(tokenizer), seed=5)
    return path


def loaded_like(tokenizer) -> SimpleNamespace:
    return SimpleNamespace(tokenizer=tokenizer, ref="thinking", context_length=256)


def test_template_kwargs_reach_the_template(tmp_path: Path) -> None:
    tokenizer = thinking_tokenizer(tmp_path)
    think, close = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    thinking = encode_prompt(loaded_like(tokenizer), "ab", True)
    plain = encode_prompt(loaded_like(tokenizer), "ab", True, template_kwargs={"enable_thinking": False})
    assert think not in thinking
    assert plain[-2:] == [think, close]
    assert DecodingConfig(chat_template_kwargs=("enable_thinking=false",)).template_kwargs() == {"enable_thinking": False}


class Fixed:
    """A SequenceCache whose next-token logits always prefer token `favourite` (then `second`)."""

    def __init__(self, vocab: int, favourite: int, second: int) -> None:
        self.logits = torch.full((1, vocab), -5.0)
        self.logits[0, favourite], self.logits[0, second] = 5.0, 3.0
        self.length = 0

    def forward(self, ids, all_logits: bool = False) -> torch.Tensor:
        self.length += len(ids)
        return self.logits.repeat(len(ids), 1) if all_logits else self.logits

    def rollback(self, length: int) -> None:
        self.length = length


@pytest.mark.parametrize("budget", [0, 2, 5])
def test_the_reasoning_budget_closes_the_thinking_span_after_n_tokens(tmp_path: Path, budget: int) -> None:
    tokenizer = thinking_tokenizer(tmp_path)
    think, close = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    a = tokenizer.convert_tokens_to_ids("a")
    config = DecodingConfig(temperature=0, reasoning_budget=budget)
    tables = build_tables(config, tokenizer, {1})
    prompt = [*tokenizer("h ab.a ")["input_ids"], think]
    tokens = (t.id for t in plain_tokens(Fixed(len(tokenizer), a, close), prompt, config, make_generator(0),
                                         tables=tables))
    out = [next(tokens) for _ in range(budget + 3)]
    assert out == [a] * budget + [close, a, a]


def test_without_a_budget_the_model_keeps_thinking(tmp_path: Path) -> None:
    tokenizer = thinking_tokenizer(tmp_path)
    think, close = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    a = tokenizer.convert_tokens_to_ids("a")
    tokens = (t.id for t in plain_tokens(Fixed(len(tokenizer), a, close), [3, think], DecodingConfig(temperature=0),
                                         make_generator(0)))
    assert [next(tokens) for _ in range(6)] == [a] * 6


@pytest.mark.parametrize("text,reasoning,answer", [
    ("<think>let me see</think> It is 4.", "let me see", "It is 4."),
    ("let me see</think>It is 4.", "let me see", "It is 4."),  # the template opened the span
    ("<think>still thinking", "still thinking", ""),
    ("no tags at all", None, "no tags at all"),
])
def test_json_rows_carry_reasoning_apart_from_text(text: str, reasoning: str | None, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)
    row = SequenceResult(text, [], [], "stop").as_json()
    assert row["text"] == answer
    assert row.get("reasoning") == reasoning


def test_generate_json_with_a_budget_and_the_switch(capsys, thinking_model: Path) -> None:
    base = ("generate", "-m", str(thinking_model), "--chat", "--greedy", "-N", "6", "--ignore-eos", "--json")
    code, out, err = run(capsys, *base, "--chat-template-kwarg", "enable_thinking=false", "ab")
    assert code == 0, err
    row = json.loads(out)
    assert row["prompt_token_ids"][-2:] == [13, 14]  # <think></think> from the template
    raw = ("generate", "-m", str(thinking_model), "--raw", "--greedy", "-N", "6", "--ignore-eos", "--json")
    code, out, err = run(capsys, *raw, "--bad-word", "<think>", "--bad-word", "</think>", "--reasoning-budget", "2",
                         "h ab.a <think>")
    assert code == 0, err
    row = json.loads(out)
    ids = row["token_ids"]
    assert row["prompt_token_ids"][-1] == 13 and ids[2] == 14 and 14 not in ids[:2] + ids[3:]  # forced once
    assert "reasoning" in row and "</think>" not in row["text"]


@pytest.mark.parametrize("args,needle", [
    (["--chat-template-kwarg", "enable_thinking"], "KEY=VALUE"),
    (["--reasoning-budget", "-3"], "reasoning-budget"),
])
def test_bad_reasoning_options_are_one_line(capsys, thinking_model: Path, args: list[str], needle: str) -> None:
    code, out, err = run(capsys, "generate", "-m", str(thinking_model), *args, "ab")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
