"""The int4 linear layer: `Int4Blocks` packed for torch's CPU int4 kernel.

    y = x' . w'^T,  x' = [x] * repeat along K,  w' = (c - 8) * scale + zero   (blocks.py)

The kernel (`torch.ops.aten._weight_int4pack_mm_for_cpu`, group 32) reads 4 bits per weight, so one
decode step reads about an eighth of the float32 bytes. Its fast path wants bfloat16 activations and
bfloat16 scales and zeros; the output is bfloat16 and is returned as float32.

In the spirit of gpt-fast's `WeightOnlyInt4Linear`: a module with a packed buffer and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from llmgen.loading.quant.blocks import GROUP, Int4Blocks, unpack_nibbles

ROW_MULTIPLE = 16  # NOTE: the CPU packing needs N divisible by 16; extra rows are zeros, cut from the output
PACK_ROWS = 1024  # rows packed at a time (a multiple of 64)


def int4_kernels_available() -> bool:
    ops = torch.ops.aten
    return hasattr(ops, "_convert_weight_to_int4pack_for_cpu") and hasattr(ops, "_weight_int4pack_mm_for_cpu")


class Int4Linear(nn.Module):
    """A bias-free linear layer over packed 4-bit weights."""

    def __init__(self, blocks: Int4Blocks) -> None:
        super().__init__()
        n, k = blocks.codes.shape
        self._pack(lambda start, stop: blocks.codes[start:stop], n, k, blocks.scale, blocks.zero, blocks.repeat)

    @classmethod
    def from_nibbles(cls, nibbles: Tensor, scale: Tensor, zero: Tensor, repeat: int) -> Int4Linear:
        """From the cache's layout (`blocks.pack_nibbles`), unpacked a slice of rows at a time."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._pack(lambda start, stop: unpack_nibbles(nibbles[start:stop]), nibbles.shape[0], nibbles.shape[1] * 2,
                    scale, zero, repeat)
        return layer

    def _pack(self, rows: Callable[[int, int], Tensor], n: int, k: int, scale: Tensor, zero: Tensor,
              repeat: int) -> None:
        if k % GROUP:
            raise ValueError(f"int4: the input dimension {k} is not a multiple of {GROUP}")
        padded = -n % ROW_MULTIPLE
        self.out_features = n
        self.repeat = repeat

        def codes(start: int) -> Tensor:  # rows start .. start + PACK_ROWS, the zero rows of padding included
            part = rows(start, min(start + PACK_ROWS, n)).to(torch.int32)
            missing = min(start + PACK_ROWS, n + padded) - start - part.shape[0]
            if missing:
                part = torch.cat([part, torch.full((missing, k), 8, dtype=torch.int32)])
            return part.contiguous()

        # NOTE: packed a slice of rows at a time, which the kernel's layout allows (it interleaves within 64
        # rows): the int32 copy it wants of a 49152-row head would otherwise cost 226 MB at its peak.
        convert = torch.ops.aten._convert_weight_to_int4pack_for_cpu
        packed = torch.cat([convert(codes(start), 1) for start in range(0, n + padded, PACK_ROWS)])
        self.register_buffer("packed", packed, persistent=False)  # [N', K / 2] uint8, the kernel's layout
        if padded:
            scale = torch.cat([scale, torch.zeros(padded, scale.shape[1])])
            zero = torch.cat([zero, torch.zeros(padded, zero.shape[1])])
        # [K / 32, N', 2]: the kernel's layout of scales and zeros
        scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # [M, K]
        if self.repeat > 1:
            x = x.repeat(1, self.repeat)  # [M, repeat * K]
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_zeros)  # [M, N']
        if y.shape[-1] != self.out_features:
            y = y[:, :self.out_features]
        return y.float().reshape(*shape, self.out_features)
