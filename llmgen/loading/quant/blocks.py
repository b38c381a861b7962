"""4-bit and 8-bit weight blocks, as GGUF stores them and as the int4 kernel wants them.

Everything here is a pure array transform on the CPU (numpy in, torch out); no model is involved.

One representation serves every weight, the convention of torch's int4 kernel
(`_weight_int4pack_mm_for_cpu`), with groups of G = 32 along the input dimension K:

    w[n, k] = (c[n, k] - 8) * scale[n, k // 32] + zero[n, k // 32],    c in 0..15

How each source maps onto it, exactly (no re-quantization):

- GGUF Q4_1, a block of 32 with fp16 d and m:      w = d * q + m     ->  c = q, scale = d, zero = m + 8 d
- GGUF Q4_0, a block of 32 with fp16 d:            w = d * (q - 8)   ->  c = q, scale = d, zero = 0
- GGUF Q8_0, a block of 32 with fp16 d, q int8:    w = d * q
  An 8-bit code does not fit in 4 bits, so it becomes *two* int4 halves along K:
  q = 16 h + l with h = q >> 4 in -8..7 and l = q & 15 in 0..15, and
      d q = (c_h - 8) * 16 d + 0     with c_h = h + 8,
          + (c_l - 8) * d + 8 d      with c_l = l.
  The halves are laid side by side, K' = 2 K, and the input is repeated: x' = [x, x]. Then
  x' . w' = x . (16 d h) + x . (d l) = x . w, with the file's own codes and scales.
- Any other weight (fp32, fp16, bf16, or a GGUF type without a repacking rule) is quantized here at
  G = 32, asymmetric, with the Q4_1 rule (gguf-py's reference): d = (max - min) / 15,
  q = round((w - min) / d), m = min, d and m stored as fp16. That is lossy, as any 4-bit
  quantization is. An 8-bit weight (a head or an embedding) is quantized with the Q8_0 rule the same way.

NOTE: the kernel itself takes bfloat16 scales and zeros and bfloat16 activations on the CPU (its float32
path is a slow reference loop, ~40x slower), so the fp16 d and m of the file are rounded to bfloat16
when packed (`linear.Int4Linear`); the codes are used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

GROUP = 32


@dataclass(frozen=True)
class Int4Blocks:
    """codes [N, K] uint8 in 0..15; scale, zero [N, K / 32] float32; `repeat` copies of the input
    are concatenated along K before the product (2 for a Q8_0 weight split into halves, else 1)."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    repeat: int = 1

    @property
    def out_features(self) -> int:
        return int(self.codes.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.codes.shape[1]) // self.repeat

    def dequantize(self) -> Tensor:
        """The float32 weight [N, in_features] these blocks stand for (the halves summed back)."""
        n, k = self.codes.shape
        w = (self.codes.float() - 8).view(n, k // GROUP, GROUP) * self.scale[..., None] + self.zero[..., None]
        w = w.view(n, k)
        return w.view(n, self.repeat, k // self.repeat).sum(dim=1) if self.repeat > 1 else w

    def rows(self, order: Tensor) -> Int4Blocks:
        """The same blocks with the output rows reordered (or selected)."""
        return Int4Blocks(self.codes[order], self.scale[order], self.zero[order], self.repeat)


def _split_blocks(raw: np.ndarray, rows: int, block_bytes: int) -> np.ndarray:
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, -1, block_bytes)
    return blocks


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """An fp16 field at byte `start` of every block -> float32 [rows, blocks]."""
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """GGUF's 16 bytes of a 32-block: element j is the low nibble of byte j, element j + 16 the high one."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def from_q4_1(raw: np.ndarray, rows: int) -> Int4Blocks:
    """raw: the tensor's bytes, [rows, blocks * 20] (fp16 d, fp16 m, 16 bytes of codes per block)."""
    blocks = _split_blocks(raw, rows, 20)
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    codes = _nibbles(blocks[..., 4:]).reshape(rows, -1)
    return Int4Blocks(torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m + 8 * d))


def from_q4_0(raw: np.ndarray, rows: int) -> Int4Blocks:
    """raw: [rows, blocks * 18] (fp16 d, 16 bytes of codes per block)."""
    blocks = _split_blocks(raw, rows, 18)
    d = _f16(blocks, 0)
    codes = _nibbles(blocks[..., 2:]).reshape(rows, -1)
    return Int4Blocks(torch.from_numpy(codes), torch.from_numpy(d), torch.zeros_like(torch.from_numpy(d)))


def q8_halves(q: Tensor, d: Tensor) -> Int4Blocks:
    """An 8-bit block weight w = d * q (q int8 [N, K], d [N, K / 32]) as two exact int4 halves."""
    q = q.to(torch.int16)
    high, low = (q >> 4) + 8, q & 15  # NOTE: >> on a signed integer is arithmetic: -1 >> 4 = -1
    codes = torch.cat([high, low], dim=1).to(torch.uint8)
    scale = torch.cat([16 * d, d], dim=1)
    zero = torch.cat([torch.zeros_like(d), 8 * d], dim=1)
    return Int4Blocks(codes, scale.float(), zero.float(), repeat=2)


def from_q8_0(raw: np.ndarray, rows: int) -> tuple[Tensor, Tensor]:
    """raw: [rows, blocks * 34] (fp16 d, 32 int8 codes per block) -> q int8 [N, K], d float32 [N, K / 32]."""
    blocks = _split_blocks(raw, rows, 34)
    d = _f16(blocks, 0)
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, -1)
    return torch.from_numpy(q), torch.from_numpy(d)


def quantize_q4(weight: Tensor) -> Int4Blocks:
    """Asymmetric 4-bit quantization at group 32 with the Q4_1 rule (lossy). weight: [N, K], K % 32 == 0."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    d = (high - low) / 15
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    codes = torch.trunc((w - low[..., None]) * inverse[..., None] + 0.5).clamp(0, 15).to(torch.uint8)
    d, low = d.half().float(), low.half().float()  # stored as fp16, as in the file format
    return Int4Blocks(codes.reshape(n, k), d, low + 8 * d)


def quantize_q8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric 8-bit quantization at group 32 with the Q8_0 rule (lossy): q int8 [N, K], d [N, K / 32]."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    d = w.abs().amax(dim=-1) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.round(w * inverse[..., None]).clamp(-128, 127).to(torch.int8)
    return q.reshape(n, k), d.half().float()  # d stored as fp16, as in the file format


def pack_nibbles(codes: Tensor) -> Tensor:
    """[N, K] codes in 0..15 -> [N, K / 2] bytes (even k in the low nibble): our on-disk layout."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: Tensor) -> Tensor:
    """Inverse of `pack_nibbles`."""
    n, half = packed.shape
    out = torch.empty(n, half * 2, dtype=torch.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out
