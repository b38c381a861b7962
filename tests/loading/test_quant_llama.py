"""The lean Llama forward against transformers' own, and the packed GGUF weights against the float
conversion that transformers made of the same file.

- with float weights (`llama.from_transformers`), the lean forward equals transformers' logits to float
  rounding: prefill, one token at a time, several tokens after a cache, after a rollback;
- the int4 weights read from the embedded GGUF are *exactly* the float conversion's weights (q and k
  un-permuted as transformers does), the tied Q8_0 head included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmgen.loading import models
from llmgen.loading.quant import llama, pack


def _hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory) -> Path:
    """A tiny llama with grouped-query attention (8 heads over 2) and tied embeddings."""
    from tiny_models import build_char_tokenizer, build_llama

    path = tmp_path_factory.mktemp("gqa")
    build_char_tokenizer(path)
    build_llama(path, 13, seed=7, hidden=64, layers=3, heads=8, kv_heads=2, tied=True)
    return path


@pytest.mark.parametrize("which", ["char_model", "gqa_model"])
def test_lean_forward_equals_transformers(which: str, request) -> None:
    hf = _hf(request.getfixturevalue(which))
    lean = llama.from_transformers(hf)
    ids = torch.tensor([[0, 5, 7, 3, 9, 4, 4, 8, 2, 11]])
    with torch.inference_mode():
        reference = hf(input_ids=ids).logits[0]  # [10, vocab]
    cache = lean.new_cache()
    torch.testing.assert_close(lean(input_ids=ids[:, :6], cache=cache).logits[0], reference[:6], rtol=1e-5, atol=1e-5)
    for i in range(6, 8):  # one token at a time after the cache
        step = lean(input_ids=ids[:, i:i + 1], cache=cache, logits_to_keep=1).logits[0, -1]
        torch.testing.assert_close(step, reference[i], rtol=1e-5, atol=1e-5)
    # several tokens after a cache: the causal mask with an offset
    several = lean(input_ids=ids[:, 8:], cache=cache).logits[0]
    torch.testing.assert_close(several, reference[8:], rtol=1e-5, atol=1e-5)
    # roll back 5 positions and read them again
    cache.crop(-5)
    assert cache.length == 5
    again = lean(input_ids=ids[:, 5:], cache=cache).logits[0]
    torch.testing.assert_close(again, reference[5:], rtol=1e-5, atol=1e-5)


def test_the_cache_grows_past_its_first_capacity(char_model: Path) -> None:
    hf = _hf(char_model)
    lean = llama.from_transformers(hf)
    ids = torch.randint(3, 13, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = hf(input_ids=ids).logits[0, -1]
    cache = llama.StaticCache(lean.shape, capacity=4)
    for i in range(40):
        last = lean(input_ids=ids[:, i:i + 1], cache=cache, logits_to_keep=1).logits[0, -1]
    assert cache.capacity >= 40 and cache.keys[0].shape[2] >= 40
    torch.testing.assert_close(last, reference, rtol=1e-5, atol=1e-5)


def test_unsupported_architectures_are_named() -> None:
    from types import SimpleNamespace

    assert "GPT2LMHeadModel" in llama.unsupported(SimpleNamespace(architectures=["GPT2LMHeadModel"]))
    assert "biases" in llama.unsupported(SimpleNamespace(architectures=["LlamaForCausalLM"], attention_bias=True))
    assert llama.unsupported(SimpleNamespace(architectures=["LlamaForCausalLM"])) is None


def test_gguf_codes_are_the_float_conversion_exactly(embedded_dir: Path) -> None:
    """Layers 0 and 29 and the tied head: the file's own codes give transformers' dequantized weights."""
    from safetensors import safe_open
    from transformers import AutoConfig

    gguf = Path(models.resolve(models.DEFAULT_MODEL).location)
    shape = llama.Shape.from_config(AutoConfig.from_pretrained(embedded_dir))
    packed = pack.from_gguf(gguf, shape)
    assert packed.notes == []
    with safe_open(str(embedded_dir / "model.safetensors"), framework="pt") as f:
        for i in (0, shape.layers - 1):
            p = f"model.layers.{i}"
            expected = {
                "qkv": torch.cat([f.get_tensor(f"{p}.self_attn.{n}_proj.weight") for n in "qkv"]),
                "o": f.get_tensor(f"{p}.self_attn.o_proj.weight"),
                "gate_up": torch.cat([f.get_tensor(f"{p}.mlp.{n}_proj.weight") for n in ("gate", "up")]),
                "down": f.get_tensor(f"{p}.mlp.down_proj.weight"),
            }
            for name, weight in expected.items():
                torch.testing.assert_close(packed.blocks(f"layers.{i}.{name}").dequantize(), weight,
                                           rtol=0, atol=1e-6, msg=f"layer {i} {name}")
            torch.testing.assert_close(packed.tensors[f"layers.{i}.norm_mlp"],
                                       f.get_tensor(f"{p}.post_attention_layernorm.weight"), rtol=0, atol=0)
        embedding = f.get_tensor("model.embed_tokens.weight")
    torch.testing.assert_close(packed.blocks("head").dequantize(), embedding, rtol=0, atol=1e-6)
    rows = torch.tensor([0, 17, 49151])
    torch.testing.assert_close(pack.Int8Embedding(packed.tensors["embed.q"], packed.tensors["embed.d"])(rows),
                               embedding[rows], rtol=0, atol=0)


def test_reverse_permutation_undoes_llama_cpp_permutation() -> None:
    # llama.cpp's permute: w.reshape(heads, 2, dim, ...).swapaxes(1, 2)
    heads, rows = 3, 24
    original = torch.arange(rows)
    permuted = original.reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(rows)
    assert torch.equal(permuted[pack.reverse_permute_rows(rows, heads)], original)
