"""The physical limit of plain decoding: memory bandwidth over the bytes read per token.

Decoding one token with a batch of one multiplies a vector by every weight matrix once, so each step
reads every weight from memory, and does about 2 FLOPs per weight: far too little work to hide the
reads. The speed limit is therefore

    ceiling tokens/s = memory bandwidth (bytes/s) / bytes of weights read per token

Bytes per token count every parameter once, except the input embedding table, of which a step reads
one row (when the output projection is tied to it, the projection reads the whole table anyway, and
it is counted once). The KV cache is read too; for a small model and short contexts it is a few
percent, so it is reported beside the ceiling rather than folded into it.

The bandwidth is measured with a large tensor read (a sum over `size_bytes`, far larger than the
caches): the best of a few repeats. Matrix-vector products over copies of the output projection are
measured too (`gemv_gbps`): it is what decoding really runs, and shows what the BLAS reaches.

NOTE: a CPU whose last-level cache holds a good part of the weights (some servers have 300 MB of
L3) can beat this "ceiling", because part of each step reads from the cache, not from memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

GB = 1e9


@dataclass(frozen=True)
class Roofline:
    bandwidth_gbps: float  # the large tensor read
    gemv_gbps: float  # a weight-sized matrix-vector product, in the model's dtype
    weight_bytes_per_token: int
    kv_bytes_per_context_token: int  # KV cache bytes read per step for each token of context
    measured_tps: float | None  # llmgen plain decoding, median

    @property
    def ceiling_tps(self) -> float:
        return self.bandwidth_gbps * GB / self.weight_bytes_per_token

    @property
    def fraction(self) -> float | None:
        return None if self.measured_tps is None else self.measured_tps / self.ceiling_tps

    @property
    def effective_gbps(self) -> float | None:
        """The bandwidth plain decoding reaches: measured tokens/s × bytes per token."""
        return None if self.measured_tps is None else self.measured_tps * self.weight_bytes_per_token / GB

    def as_json(self) -> dict[str, Any]:
        return {"bandwidth_gbps": round(self.bandwidth_gbps, 2), "gemv_gbps": round(self.gemv_gbps, 2),
                "weight_bytes_per_token": self.weight_bytes_per_token,
                "kv_bytes_per_context_token": self.kv_bytes_per_context_token,
                "ceiling_tokens_per_second": round(self.ceiling_tps, 2),
                "measured_tokens_per_second": None if self.measured_tps is None else round(self.measured_tps, 2),
                "fraction_of_ceiling": None if self.fraction is None else round(self.fraction, 3),
                "effective_gbps": None if self.effective_gbps is None else round(self.effective_gbps, 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def read_bandwidth(device: torch.device | str = "cpu", size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """GB/s of reading a `size_bytes` float32 tensor once (sum over it), best of `repeats`."""
    device = torch.device(device)
    data = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up (page faults, clocks)
        _sync(device)
        started = time.perf_counter()
        data.sum()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    del data
    return size_bytes / best / GB


@torch.inference_mode()
def gemv_bandwidth(rows: int, cols: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                   size_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """GB/s of `weight @ vector` with [rows, cols] weights (the bytes of the weights over the time).

    NOTE: it cycles through enough copies of the weight to fill `size_bytes`, so that no copy is still
    in the processor's cache when it is read again (some server CPUs have hundreds of MB of L3).
    """
    device = torch.device(device)
    element = torch.empty((), dtype=dtype).element_size()
    copies = max(1, -(-size_bytes // (rows * cols * element)))
    weights = [torch.ones(rows, cols, dtype=dtype, device=device) for _ in range(copies)]
    vector = torch.ones(1, cols, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync(device)
        started = time.perf_counter()
        for weight in weights:
            torch.nn.functional.linear(vector, weight)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return copies * rows * cols * element / best / GB


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of parameters one decode step reads: all of them, less the input embedding table (one row)
    unless the output projection shares it."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    embed = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embed
    if not tied:
        total -= (embed.shape[0] - 1) * embed.shape[1] * embed.element_size()
    return int(total)


def kv_bytes_per_token(model: Any) -> int:
    config = model.config
    layers: int = getattr(config, "num_hidden_layers", 0)
    heads: int = getattr(config, "num_key_value_heads", 0) or getattr(config, "num_attention_heads", 0)
    head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return int(2 * layers * heads * head_dim * element)


def measure(model: Any, device: torch.device, measured_tps: float | None, size_bytes: int = 1 << 30) -> Roofline:
    """The roofline of `model` on `device`; `measured_tps` is llmgen's plain decode speed, if known."""
    output = model.get_output_embeddings().weight
    dtype = next(model.parameters()).dtype
    return Roofline(read_bandwidth(device, size_bytes),
                    gemv_bandwidth(output.shape[0], output.shape[1], dtype, device, size_bytes),
                    weight_bytes_per_token(model), kv_bytes_per_token(model), measured_tps)
