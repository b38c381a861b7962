"""A lean forward for the Llama architecture, in one readable file (after gpt-fast's `model.py`).

It exists because transformers' per-layer machinery costs about as much as the int4 matmuls
themselves on a small model (the issue's profile: ~10 ms of a step). Per step and per layer it does:

    x = rmsnorm(h) * w1                                  # float32 [B, k, D]
    q, k, v = split(W_qkv x)                             # one fused matmul (rows of q, k and v stacked)
    q, k = rotary(q, pos), rotary(k, pos)                # HF's rotate_half convention
    K[pos], V[pos] = k, v                                # a position-indexed cache: rollback is free
    h = h + W_o attention(q, K[:pos+k], V[:pos+k])       # causal, grouped-query (SDPA)
    x = rmsnorm(h) * w2
    g, u = split(W_gate_up x)                            # one fused matmul
    h = h + W_down (silu(g) * u)

then logits = W_head rmsnorm(h) for the last position (or all of them). The linear layers are given:
`linear.Int4Linear` for `--quant int4`, or plain `nn.Linear` (float32), with which this file is
checked against transformers' own Llama (tests/test_quant_llama.py). The residual stream, norms,
rotary and attention stay float32; only the matmul inputs are bfloat16 inside the int4 kernel.

The call signature and the cache's `crop` mirror transformers', so the torch engine's `CachedLM`, the speculative
loop and the benchmark use this model as they use any other: a module that returns logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SUPPORTED = ("LlamaForCausalLM",)


@dataclass(frozen=True)
class Shape:
    """The numbers of a Llama model that the forward needs, read from its HF config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    context: int

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        heads = config.num_attention_heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   intermediate=config.intermediate_size, vocab=config.vocab_size, eps=config.rms_norm_eps,
                   context=config.max_position_embeddings)


def unsupported(config: Any) -> str | None:
    """Why this forward cannot run a model with `config`, or None."""
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a in SUPPORTED for a in archs):
        return f"architecture {', '.join(archs) or 'unknown'} (the int4 path runs {', '.join(SUPPORTED)})"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "linear layers with biases"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "pretraining_tp", 1) not in (1, None):
        return "pretraining_tp > 1"
    return None


def rotary_inverse_frequencies(config: Any, head_dim: int) -> tuple[Tensor, float]:
    """inv_freq [head_dim / 2] and the attention scaling of the config's rope type (transformers' table)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (theta ** exponent), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def rms_norm(h: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF's LlamaRMSNorm in float32: weight * h / sqrt(mean(h^2) + eps)."""
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticCache:
    """Keys and values by position: per layer, buffers [B, kv_heads, capacity, head_dim] float32.

    `length` is how many positions are valid; rolling back only lowers it. The capacity doubles when
    needed (up to the context), so a short run does not hold the whole context's memory. The batch size
    is set by the first forward.

    `layers[i].keys` / `.values` are the valid part, [B, kv_heads, length, head_dim], and can be assigned
    (rows selected, columns cut or padded) as on a transformers `DynamicCache` layer: that is what
    `engines.torch.RowCache` does to a batch of left-padded rows, with this model as with a transformers one.
    """

    def __init__(self, shape: Shape, batch: int | None = None, capacity: int = 256) -> None:
        self.shape = shape
        self.first_capacity = min(capacity, shape.context)
        self.buffers: list[list[Tensor]] = [[], []]  # keys, values: per layer [B, kv_heads, capacity, head_dim]
        self.valid: list[list[int]] = [[0] * shape.layers, [0] * shape.layers]  # valid positions per buffer
        self.layers = [_CacheLayer(self, i) for i in range(shape.layers)]
        if batch is not None:
            self._allocate(batch, self.first_capacity)

    @property
    def keys(self) -> list[Tensor]:
        return self.buffers[0]

    @property
    def values(self) -> list[Tensor]:
        return self.buffers[1]

    @property
    def length(self) -> int:
        return self.valid[0][0]

    @length.setter
    def length(self, length: int) -> None:
        self.valid = [[length] * self.shape.layers, [length] * self.shape.layers]

    @property
    def capacity(self) -> int:
        return min((b.shape[2] for b in self.keys + self.values), default=self.first_capacity)

    def _allocate(self, batch: int, capacity: int) -> None:
        s = self.shape
        self.buffers = [[torch.zeros(batch, s.kv_heads, capacity, s.head_dim) for _ in range(s.layers)]
                        for _ in range(2)]

    def reserve(self, batch: int, length: int) -> None:
        """Room for `length` positions of `batch` rows, keeping the valid ones."""
        if not self.keys:
            self._allocate(batch, max(self.first_capacity, min(length, self.shape.context)))
        if self.keys[0].shape[0] != batch:
            raise ValueError(f"the cache holds {self.keys[0].shape[0]} rows, not {batch}")
        capacity = self.capacity
        if length <= capacity:
            return
        if length > self.shape.context:
            raise ValueError(f"the sequence ({length} tokens) is longer than the context ({self.shape.context})")
        old, valid = self.buffers, self.length
        self._allocate(batch, min(self.shape.context, max(length, 2 * capacity)))
        for new_list, old_list in zip(self.buffers, old):
            for new, previous in zip(new_list, old_list):
                new[:, :, :valid] = previous[:, :, :valid]

    def get_seq_length(self, layer: int = 0) -> int:
        return self.length

    def crop(self, length: int) -> None:
        """As transformers' `Cache.crop`: a negative count drops that many positions from the end."""
        self.length = self.length + length if length < 0 else min(self.length, length)


class _CacheLayer:
    """One layer's valid keys and values, as a transformers cache layer shows them. Assigning one
    replaces that buffer (and its valid length) alone: `RowCache` assigns every layer's keys and values
    in turn, reading each before it is replaced, and the cache agrees with itself again at the end."""

    is_sliding = False

    def __init__(self, cache: StaticCache, index: int) -> None:
        self.cache, self.index = cache, index

    def _get(self, kind: int) -> Tensor:
        return self.cache.buffers[kind][self.index][:, :, :self.cache.valid[kind][self.index]]

    def _set(self, kind: int, value: Tensor) -> None:
        self.cache.buffers[kind][self.index] = value.contiguous()
        self.cache.valid[kind][self.index] = int(value.shape[2])

    keys = property(lambda self: self._get(0), lambda self, value: self._set(0, value))
    values = property(lambda self: self._get(1), lambda self, value: self._set(1, value))


class Layer(nn.Module):
    def __init__(self, qkv: nn.Module, o: nn.Module, gate_up: nn.Module, down: nn.Module,
                 norm_attention: Tensor, norm_mlp: Tensor) -> None:
        super().__init__()
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.register_buffer("norm_attention", norm_attention.float(), persistent=False)
        self.register_buffer("norm_mlp", norm_mlp.float(), persistent=False)


class LeanLlama(nn.Module):
    """A Llama causal LM over given linear layers; called like a transformers model."""

    def __init__(self, config: Any, embed: Callable[[Tensor], Tensor], layers: list[Layer], norm: Tensor,
                 head: nn.Module, generation_config: Any = None, quant: str = "none") -> None:
        super().__init__()
        self.config = config
        self.generation_config = generation_config or SimpleNamespace(eos_token_id=config.eos_token_id)
        self.shape = Shape.from_config(config)
        self.quant = quant
        self.embed = embed
        self.layers = nn.ModuleList(layers)
        self.register_buffer("norm", norm.float(), persistent=False)
        self.head = head
        inv_freq, self.rope_scaling = rotary_inverse_frequencies(config, self.shape.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.scale = self.shape.head_dim ** -0.5

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def vocab_size(self) -> int:
        return self.shape.vocab

    batched_rows = True  # `engines.torch.RowCache` can decode left-padded rows with this model and its cache

    def new_cache(self, batch: int | None = None) -> StaticCache:
        return StaticCache(self.shape, batch)

    @torch.inference_mode()
    def forward(self, input_ids: Tensor, cache: StaticCache | None = None, use_cache: bool = True,
                logits_to_keep: int = 0, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                **_: Any) -> SimpleNamespace:
        """input_ids [B, k] after `cache.length` cached positions (a fresh cache when None)
        -> .logits [B, k or logits_to_keep, vocab].

        Rows of one length need neither `attention_mask` nor `position_ids`. Left-padded rows give both,
        as for a transformers model: attention_mask [B, cache.length + k] (0 on padding) and
        position_ids [B, k]."""
        s = self.shape
        batch, k = input_ids.shape
        if cache is None:
            cache = StaticCache(s, batch, capacity=k)
        start = cache.length
        end = start + k
        cache.reserve(batch, end)
        if position_ids is None:
            position_ids = torch.arange(start, end)[None]  # [1, k]
        cos, sin = self._rotary(position_ids)  # [B or 1, 1, k, head_dim]
        mask = self._mask(start, k, attention_mask)
        h = self.embed(input_ids)  # [B, k, D] float32
        q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for index, layer in enumerate(self.layers):
            x = rms_norm(h, layer.norm_attention, s.eps)
            q, key, value = layer.qkv(x).split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(batch, k, s.heads, s.head_dim).transpose(1, 2)  # [B, H, k, hd]
            key = key.view(batch, k, s.kv_heads, s.head_dim).transpose(1, 2)  # [B, KV, k, hd]
            value = value.view(batch, k, s.kv_heads, s.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            key = key * cos + rotate_half(key) * sin
            keys, values = cache.keys[index], cache.values[index]
            keys[:, :, start:end] = key
            values[:, :, start:end] = value
            attention = F.scaled_dot_product_attention(
                q, keys[:, :, :end], values[:, :, :end], attn_mask=mask, is_causal=mask is None and k > 1,
                scale=self.scale, enable_gqa=s.kv_heads != s.heads)
            h = h + layer.o(attention.transpose(1, 2).reshape(batch, k, q_size))
            x = rms_norm(h, layer.norm_mlp, s.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        cache.length = end
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.head(rms_norm(h, self.norm, s.eps)))

    def _rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # [B or 1, k, head_dim / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B or 1, 1, k, head_dim]
        return emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling

    @staticmethod
    def _mask(start: int, k: int, attention_mask: Tensor | None) -> Tensor | None:
        """None where SDPA's own causal flag (or no mask, k = 1) does; else bool [B or 1, 1, k, start + k]."""
        if attention_mask is None:
            if k == 1 or start == 0:
                return None
            return (torch.arange(start + k)[None, :] <= torch.arange(start, start + k)[:, None])[None, None]
        columns = torch.arange(start + k)[None, :]
        rows = torch.arange(start, start + k)[:, None]
        causal = columns <= rows  # [k, start + k]
        # NOTE: a padding query sees no real key; letting every query see itself keeps its softmax finite
        # (a fully masked row would be NaN, and NaN keys would leak into later rows through 0 * NaN).
        return ((attention_mask[:, None, None, :].bool() & causal) | (columns == rows))  # [B, 1, k, start + k]


def from_transformers(model: Any) -> LeanLlama:
    """This forward over a transformers Llama's own float weights (plain `nn.Linear`, fused like the int4
    path): the bridge that checks this file against transformers (tests/test_quant_llama.py)."""
    why = unsupported(model.config)
    if why:
        raise ValueError(f"no lean forward for {why}")

    def linear(*weights: Tensor) -> nn.Linear:
        weight = torch.cat([w.detach().float() for w in weights])
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        return layer

    layers = []
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        layers.append(Layer(linear(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight), linear(a.o_proj.weight),
                            linear(m.gate_proj.weight, m.up_proj.weight), linear(m.down_proj.weight),
                            block.input_layernorm.weight.detach(), block.post_attention_layernorm.weight.detach()))
    embedding = model.model.embed_tokens.weight.detach().float()
    return LeanLlama(model.config, lambda ids: embedding[ids], layers, model.model.norm.weight.detach(),
                     linear(model.lm_head.weight), model.generation_config)
