"""The int4 representation: GGUF blocks read exactly, the Q8_0 halves exact, the kernel layer right.

gguf-py's own quantizers and dequantizers (the reference of the GGUF format) are the oracle here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmgen.loading.quant import blocks as qb
from llmgen.loading.quant.linear import Int4Linear

gguf = pytest.importorskip("gguf")


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[0, :32] = 0.0  # a constant block: d = 0
    w[1, :32] = 0.7  # a constant, non-zero block
    return w


def _gguf_blocks(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(w, qtype)  # [rows, bytes]
    return raw, gguf.quants.dequantize(raw, qtype).reshape(w.shape)


@pytest.mark.parametrize("kind,reader", [("Q4_1", qb.from_q4_1), ("Q4_0", qb.from_q4_0)])
def test_gguf_4bit_blocks_are_read_exactly(kind: str, reader) -> None:
    w = _weights(48, 96, 0)
    raw, reference = _gguf_blocks(w, kind)
    blocks = reader(raw, 48)
    assert blocks.codes.shape == (48, 96) and blocks.codes.max() <= 15
    # NOTE: float32 arithmetic in another order: d*q + m against (q-8)*d + (m+8d), equal to a few ulps
    torch.testing.assert_close(blocks.dequantize(), torch.from_numpy(reference), rtol=0, atol=1e-6)


def test_q8_0_becomes_two_exact_int4_halves() -> None:
    w = _weights(32, 64, 1)
    raw, reference = _gguf_blocks(w, "Q8_0")
    q, d = qb.from_q8_0(raw, 32)
    assert q.dtype == torch.int8 and int(q.min()) >= -128
    torch.testing.assert_close((q.float().view(32, 2, 32) * d[..., None]).view(32, 64), torch.from_numpy(reference),
                               rtol=0, atol=0)
    halves = qb.q8_halves(q, d)
    assert halves.repeat == 2 and halves.codes.shape == (32, 128) and halves.codes.max() <= 15
    torch.testing.assert_close(halves.dequantize(), torch.from_numpy(reference), rtol=0, atol=1e-6)


def test_q8_halves_cover_the_whole_int8_range() -> None:
    q = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).view(8, 32)
    d = torch.full((8, 1), 0.5)
    assert torch.equal(qb.q8_halves(q, d).dequantize(), q.float() * 0.5)


def test_quantizers_match_the_gguf_reference() -> None:
    w = _weights(16, 64, 2)
    _, q4_reference = _gguf_blocks(w, "Q4_1")
    torch.testing.assert_close(qb.quantize_q4(torch.from_numpy(w)).dequantize(), torch.from_numpy(q4_reference),
                               rtol=0, atol=1e-6)
    _, q8_reference = _gguf_blocks(w, "Q8_0")
    q, d = qb.quantize_q8(torch.from_numpy(w))
    torch.testing.assert_close((q.float().view(16, 2, 32) * d[..., None]).view(16, 64),
                               torch.from_numpy(q8_reference), rtol=0, atol=1e-6)


def test_nibbles_round_trip() -> None:
    codes = torch.randint(0, 16, (5, 64), dtype=torch.uint8)
    packed = qb.pack_nibbles(codes)
    assert packed.shape == (5, 32)
    assert torch.equal(qb.unpack_nibbles(packed), codes)


@pytest.mark.parametrize("rows", [13, 48, 64, 1040])  # 13: padded to 16 rows; 1040: packed in two slices
def test_int4_linear_computes_the_dequantized_product(rows: int) -> None:
    torch.manual_seed(0)
    blocks = qb.quantize_q4(torch.randn(rows, 96) * 0.1)
    layer = Int4Linear(blocks)
    x = torch.randn(3, 5, 96)
    y = layer(x)
    assert y.shape == (3, 5, rows) and y.dtype == torch.float32
    # NOTE: the kernel rounds activations, scales and zeros to bfloat16 (8 bits of mantissa)
    reference = x.bfloat16().float() @ blocks.dequantize().t()
    torch.testing.assert_close(y, reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))


def test_int4_linear_with_halves_computes_the_8bit_product() -> None:
    torch.manual_seed(1)
    q, d = qb.quantize_q8(torch.randn(32, 64))
    layer = Int4Linear(qb.q8_halves(q, d))
    x = torch.randn(4, 64)
    reference = x.bfloat16().float() @ (q.float().view(32, 2, 32) * d[..., None]).view(32, 64).t()
    torch.testing.assert_close(layer(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))


def test_a_wrong_layer_is_detected() -> None:
    """The tolerance above is tight enough to see a code off by one in a single block."""
    torch.manual_seed(2)
    blocks = qb.quantize_q4(torch.randn(16, 64))
    wrong = blocks.codes.clone()
    wrong[3, :32] = (wrong[3, :32].int() + 1).clamp(0, 15).to(torch.uint8)
    layer = Int4Linear(qb.Int4Blocks(wrong, blocks.scale, blocks.zero))
    x = torch.ones(1, 64)
    reference = x @ blocks.dequantize().t()
    with pytest.raises(AssertionError):
        torch.testing.assert_close(layer(x), reference, rtol=0.02, atol=0.02 * float(reference.abs().max()))
