"""`pack.from_gguf` on a GGUF file written here with gguf-py: every type it repacks (Q4_0, Q4_1, Q8_0),
a type it cannot repack (F16: quantized from its values, with a note), llama.cpp's rotary permutation of
q and k undone, and a missing tensor named in the error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmgen.loading.quant import pack
from llmgen.loading.quant.llama import Shape

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
SHAPE = Shape(layers=1, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96, vocab=48, eps=1e-5,
              context=64)


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's permutation of q and k rows for its rotary layout."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(path: Path, types: dict[str, Q], skip: str | None = None) -> dict[str, np.ndarray]:
    """A tiny llama GGUF; returns each tensor as the float weight (HF layout) its blocks stand for."""
    rng = np.random.default_rng(0)
    h, i, s = SHAPE.hidden, SHAPE.intermediate, SHAPE
    shapes = {"token_embd.weight": (s.vocab, h), "blk.0.attn_q.weight": (s.heads * s.head_dim, h),
              "blk.0.attn_k.weight": (s.kv_heads * s.head_dim, h), "blk.0.attn_v.weight": (s.kv_heads * s.head_dim, h),
              "blk.0.attn_output.weight": (h, s.heads * s.head_dim), "blk.0.ffn_gate.weight": (i, h),
              "blk.0.ffn_up.weight": (i, h), "blk.0.ffn_down.weight": (h, i)}
    writer = gguf.GGUFWriter(str(path), "llama")
    expected = {}
    for name, shape in shapes.items():
        if name == skip:
            continue
        w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        kind = types.get(name, Q.Q4_1)
        stored = w
        if ".attn_q." in name:
            stored = llama_cpp_permute(w, s.heads)
        elif ".attn_k." in name:
            stored = llama_cpp_permute(w, s.kv_heads)
        if kind == Q.F16:
            writer.add_tensor(name, stored.astype(np.float16))
            expected[name] = w.astype(np.float16).astype(np.float32)
        else:
            raw = gguf.quants.quantize(stored, kind)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=kind)
            # what the blocks stand for, in HF's row order
            values = gguf.quants.dequantize(raw, kind).reshape(shape)
            if ".attn_q." in name or ".attn_k." in name:
                heads = s.heads if ".attn_q." in name else s.kv_heads
                values = values.reshape(heads, shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(shape)
            expected[name] = values
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(h, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def test_every_repackable_type_is_read_exactly_and_q_k_are_unpermuted(tmp_path: Path) -> None:
    types = {"token_embd.weight": Q.Q8_0, "blk.0.attn_k.weight": Q.Q4_0, "blk.0.ffn_down.weight": Q.Q8_0}
    expected = write(tmp_path / "tiny.gguf", types)
    packed = pack.from_gguf(tmp_path / "tiny.gguf", SHAPE)
    assert packed.notes == []
    qkv = np.concatenate([expected[f"blk.0.attn_{n}.weight"] for n in "qkv"])
    np.testing.assert_allclose(packed.blocks("layers.0.qkv").dequantize().numpy(), qkv, rtol=0, atol=1e-6)
    np.testing.assert_allclose(packed.blocks("layers.0.down").dequantize().numpy(), expected["blk.0.ffn_down.weight"],
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(packed.blocks("head").dequantize().numpy(), expected["token_embd.weight"],
                               rtol=0, atol=1e-6)


def test_a_type_without_a_repacking_rule_is_quantized_with_a_note(tmp_path: Path) -> None:
    expected = write(tmp_path / "f16.gguf", {"blk.0.ffn_up.weight": Q.F16})
    packed = pack.from_gguf(tmp_path / "f16.gguf", SHAPE)
    assert len(packed.notes) == 1 and "blk.0.ffn_up.weight is F16" in packed.notes[0]
    gate_up = packed.blocks("layers.0.gate_up").dequantize()
    up = torch.from_numpy(expected["blk.0.ffn_up.weight"])
    error = (gate_up[SHAPE.intermediate:] - up).abs().max()
    assert 0 < error < float(up.abs().max()) / 8  # quantized: close, not equal


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    write(tmp_path / "missing.gguf", {}, skip="blk.0.ffn_gate.weight")
    with pytest.raises(ValueError, match="blk.0.ffn_gate.weight"):
        pack.from_gguf(tmp_path / "missing.gguf", SHAPE)
