"""From a checkpoint to the packed int4 weights of a Llama model, and from those to a `LeanLlama`.

Two sources:
- a GGUF file: its own Q4_0 / Q4_1 codes and block scales are used as they are, and a Q8_0 tensor (the
  tied embedding of the embedded SmolLM2) becomes two exact int4 halves (`blocks.q8_halves`). A tensor
  of any other type is dequantized and quantized here, and reported in `notes`.
- a transformers checkpoint (safetensors): layers quantized at group 32 (Q4_1 rule), the embedding and
  lm_head at 8 bits per group of 32 (Q8_0 rule), which keeps greedy agreement where 4 bits would not.

Either way the result is a flat dict of tensors (`Packed.tensors`), which is what the cache stores:

    layers.{i}.{qkv,o,gate_up,down}.{codes,scale,zero,repeat}    codes: two per byte (blocks.pack_nibbles)
    head.{codes,scale,zero,repeat}
    embed.q  int8 [vocab, D],  embed.d  [vocab, D / 32]            (rows looked up, never multiplied)
    layers.{i}.norm_attention, layers.{i}.norm_mlp, norm           float32

q and k are stacked with v into one `qkv` matmul, gate with up into `gate_up`: stacking rows is exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llmgen.loading.quant import blocks as qb
from llmgen.loading.quant.linear import Int4Linear
from llmgen.loading.quant.llama import Layer, LeanLlama, Shape

LINEARS = ("qkv", "o", "gate_up", "down")


@dataclass
class Packed:
    tensors: MutableMapping[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put_blocks(self, name: str, b: qb.Int4Blocks) -> None:
        self.tensors[f"{name}.codes"] = qb.pack_nibbles(b.codes)
        self.tensors[f"{name}.scale"] = b.scale.float().contiguous()
        self.tensors[f"{name}.zero"] = b.zero.float().contiguous()
        self.tensors[f"{name}.repeat"] = torch.tensor([b.repeat], dtype=torch.int32)

    def blocks(self, name: str) -> qb.Int4Blocks:
        t = self.tensors
        return qb.Int4Blocks(qb.unpack_nibbles(t[f"{name}.codes"]), t[f"{name}.scale"], t[f"{name}.zero"],
                             int(t[f"{name}.repeat"][0]))


def stack(parts: list[qb.Int4Blocks]) -> qb.Int4Blocks:
    """Blocks of several weights with the same input, their output rows stacked."""
    return qb.Int4Blocks(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                         torch.cat([p.zero for p in parts]), parts[0].repeat)


def reverse_permute_rows(rows: int, heads: int) -> Tensor:
    """The row order that undoes llama.cpp's rotary permutation of q and k (as transformers' GGUF loader
    does for the float weights): rows [heads, 2, dim] were stored as [heads, dim, 2]."""
    dim = rows // heads // 2
    return torch.arange(rows).reshape(heads, dim, 2).transpose(1, 2).reshape(rows)


# --- GGUF -----------------------------------------------------------------------------------------

def from_gguf(path: Path, shape: Shape) -> Packed:
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    packed = Packed()

    def get(name: str) -> Any:
        if name not in tensors:
            raise ValueError(f"{path.name} has no tensor {name!r}")
        return tensors[name]

    def dense(t: Any) -> Tensor:
        rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(rows, -1)  # a writable copy

    def int4(name: str) -> qb.Int4Blocks:
        t = get(name)
        rows = int(t.shape[-1])
        kind = t.tensor_type.name
        if kind == "Q4_1":
            return qb.from_q4_1(t.data, rows)
        if kind == "Q4_0":
            return qb.from_q4_0(t.data, rows)
        if kind == "Q8_0":
            return qb.q8_halves(*qb.from_q8_0(t.data, rows))
        packed.notes.append(f"{name} is {kind}, which has no repacking rule: quantized from its dequantized values")
        return qb.quantize_q4(dense(t))

    def int8(name: str) -> tuple[Tensor, Tensor]:
        t = get(name)
        if t.tensor_type.name == "Q8_0":
            return qb.from_q8_0(t.data, int(t.shape[-1]))
        return qb.quantize_q8(dense(t))

    def vector(name: str) -> Tensor:
        return dense(get(name)).reshape(-1)

    q_order = reverse_permute_rows(shape.heads * shape.head_dim, shape.heads)
    k_order = reverse_permute_rows(shape.kv_heads * shape.head_dim, shape.kv_heads)
    for i in range(shape.layers):
        b = f"blk.{i}"
        q, k, v = int4(f"{b}.attn_q.weight"), int4(f"{b}.attn_k.weight"), int4(f"{b}.attn_v.weight")
        packed.put_blocks(f"layers.{i}.qkv", stack([q.rows(q_order), k.rows(k_order), v]))
        packed.put_blocks(f"layers.{i}.o", int4(f"{b}.attn_output.weight"))
        packed.put_blocks(f"layers.{i}.gate_up", stack([int4(f"{b}.ffn_gate.weight"), int4(f"{b}.ffn_up.weight")]))
        packed.put_blocks(f"layers.{i}.down", int4(f"{b}.ffn_down.weight"))
        packed.tensors[f"layers.{i}.norm_attention"] = vector(f"{b}.attn_norm.weight")
        packed.tensors[f"layers.{i}.norm_mlp"] = vector(f"{b}.ffn_norm.weight")
    packed.tensors["norm"] = vector("output_norm.weight")
    embed_q, embed_d = int8("token_embd.weight")
    packed.tensors["embed.q"], packed.tensors["embed.d"] = embed_q.contiguous(), embed_d.contiguous()
    if "output.weight" in tensors:
        packed.put_blocks("head", int4("output.weight"))
    else:  # tied: the head is the embedding, at its own 8 bits
        packed.put_blocks("head", qb.q8_halves(embed_q, embed_d))
    return packed


# --- transformers checkpoints ---------------------------------------------------------------------

def from_state_dict(get: Callable[[str], Tensor | None], shape: Shape) -> Packed:
    """`get(name)` returns a transformers Llama weight by its state-dict name, or None if absent."""
    packed = Packed()

    def need(name: str) -> Tensor:
        value = get(name)
        if value is None:
            raise ValueError(f"the checkpoint has no weight {name!r}")
        return value.float()

    for i in range(shape.layers):
        p = f"model.layers.{i}"
        attn = [qb.quantize_q4(need(f"{p}.self_attn.{n}_proj.weight")) for n in ("q", "k", "v")]
        packed.put_blocks(f"layers.{i}.qkv", stack(attn))
        packed.put_blocks(f"layers.{i}.o", qb.quantize_q4(need(f"{p}.self_attn.o_proj.weight")))
        mlp = [qb.quantize_q4(need(f"{p}.mlp.{n}_proj.weight")) for n in ("gate", "up")]
        packed.put_blocks(f"layers.{i}.gate_up", stack(mlp))
        packed.put_blocks(f"layers.{i}.down", qb.quantize_q4(need(f"{p}.mlp.down_proj.weight")))
        packed.tensors[f"layers.{i}.norm_attention"] = need(f"{p}.input_layernorm.weight")
        packed.tensors[f"layers.{i}.norm_mlp"] = need(f"{p}.post_attention_layernorm.weight")
    packed.tensors["norm"] = need("model.norm.weight")
    embed_q, embed_d = qb.quantize_q8(need("model.embed_tokens.weight"))
    packed.tensors["embed.q"], packed.tensors["embed.d"] = embed_q, embed_d
    head = get("lm_head.weight")
    packed.put_blocks("head", qb.q8_halves(embed_q, embed_d) if head is None
                      else qb.q8_halves(*qb.quantize_q8(head.float())))
    return packed


def from_checkpoint(directory: Path, shape: Shape) -> Packed:
    """The safetensors files of a transformers model directory (sharded or not)."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        where = {name: directory / f for name, f in json.loads(index.read_text())["weight_map"].items()}
    else:
        where = {}
        for file in sorted(directory.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                where.update({name: file for name in handle.keys()})
    handles: dict[Path, Any] = {}

    def get(name: str) -> Tensor | None:
        file = where.get(name)
        if file is None:
            return None
        if file not in handles:
            handles[file] = safe_open(str(file), framework="pt")
        return handles[file].get_tensor(name)

    return from_state_dict(get, shape)


# --- the model ------------------------------------------------------------------------------------

class Int8Embedding:
    """Row lookup in 8-bit blocks: w[t] = q[t] * d[t] (exact for the file's Q8_0 codes)."""

    def __init__(self, q: Tensor, d: Tensor) -> None:
        self.q, self.d = q, d

    def __call__(self, ids: Tensor) -> Tensor:
        rows = self.q[ids].float()  # [..., D]
        shape = rows.shape
        return (rows.view(*shape[:-1], -1, qb.GROUP) * self.d[ids][..., None]).view(shape)


def dequantized_linear(blocks: qb.Int4Blocks) -> nn.Linear:
    """The float32 layer the blocks stand for: what the int4 kernel computes, but for its bfloat16 rounding."""
    layer = nn.Linear(blocks.in_features, blocks.out_features, bias=False)
    layer.weight = nn.Parameter(blocks.dequantize(), requires_grad=False)
    return layer


def build(packed: Packed, config: Any, generation_config: Any = None,
          linear: Callable[[qb.Int4Blocks], nn.Module] | None = None) -> LeanLlama:
    """A `LeanLlama` running the packed weights through the int4 kernel (or `linear`, for the tests).

    NOTE: layer by layer from the cache's own layout, so that no weight is held unpacked in full (the
    tensors may be read lazily from the cache file: `cache.LazyTensors`)."""
    shape = Shape.from_config(config)
    t = packed.tensors

    def make(name: str) -> nn.Module:
        if linear is not None:
            return linear(packed.blocks(name))
        return Int4Linear.from_nibbles(t[f"{name}.codes"], t[f"{name}.scale"], t[f"{name}.zero"],
                                       int(t[f"{name}.repeat"][0]))

    def layer(i: int) -> Layer:
        qkv, o, gate_up, down = (make(f"layers.{i}.{n}") for n in LINEARS)
        return Layer(qkv, o, gate_up, down, t[f"layers.{i}.norm_attention"], t[f"layers.{i}.norm_mlp"])

    layers = [layer(i) for i in range(shape.layers)]
    return LeanLlama(config, Int8Embedding(t["embed.q"], t["embed.d"]), layers, t["norm"], make("head"),
                     generation_config, quant="int4")
