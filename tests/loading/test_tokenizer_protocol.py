"""Both tokenizers implement `loading.tokenizer.Tokenizer`, and give the same answers on the embedded GGUF
file: transformers' (the torch engine's, converted from the file) and `GGUFTokenizer` (the llama.cpp engine's)."""

from __future__ import annotations

import pytest

from llmgen.loading import models
from llmgen.loading.tokenizer import METHODS, Tokenizer

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def pair(embedded):
    return embedded.tokenizer, models.load(models.DEFAULT_MODEL, engine="llamacpp", threads=1).tokenizer


def test_both_implement_every_method(pair) -> None:
    for tokenizer in pair:
        assert isinstance(tokenizer, Tokenizer)
        for name in METHODS:
            assert callable(getattr(tokenizer, name)), (type(tokenizer).__name__, name)


def test_both_answer_alike(pair) -> None:
    hf, gguf = pair
    ids = [int(i) for i in gguf("The capital of France is Paris.", add_special_tokens=False)["input_ids"]]
    assert [int(i) for i in hf("The capital of France is Paris.", add_special_tokens=False)["input_ids"]] == ids
    assert hf.decode(ids, skip_special_tokens=True) == gguf.decode(ids, skip_special_tokens=True)
    rows = [[i] for i in ids]
    assert hf.batch_decode(rows, skip_special_tokens=False) == gguf.batch_decode(rows, skip_special_tokens=False)
    messages = [{"role": "user", "content": "Hi there"}]
    for tokenizer in pair:  # template keyword arguments are the template's variables; this one ignores them
        with_kwargs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    enable_thinking=False)
        assert list(with_kwargs) == list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                       tokenize=True))
    assert len(hf.get_vocab()) == len(gguf.get_vocab())
