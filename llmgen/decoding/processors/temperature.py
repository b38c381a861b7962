"""Temperature, fixed or dynamic.

- fixed: logit / T. (T = 0 is greedy and never reaches the warpers.)
- dynamic (llama.cpp's `temp_ext`, arXiv:2309.02772), with range R > 0: over the n tokens still
  drawable, H = -sum p log p, and the temperature is
      T' = T_min + (T_max - T_min) * (H / log n) ** exponent,   T_min = max(0, T - R), T_max = T + R
  then logit / T' (T' <= 0 keeps only the top token). With one drawable token nothing changes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors.context import Step
from llmgen.decoding.processors.truncation import NEG_INF, entropy


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


def apply_dynamic_temperature(logits: Tensor, temperature: float, spread: float, exponent: float) -> Tensor:
    if spread <= 0:
        return apply_temperature(logits, temperature)
    low, high = max(0.0, temperature - spread), temperature + spread
    drawable = torch.isfinite(logits).sum(dim=-1, keepdim=True)  # [rows, 1]
    max_entropy = torch.log(drawable.clamp(min=2).to(torch.float32))
    normalized = entropy(logits) / max_entropy
    dynamic = low + (high - low) * normalized.clamp(min=0) ** exponent  # [rows, 1]
    top_only = logits.masked_fill(logits < logits.amax(dim=-1, keepdim=True), NEG_INF)
    scaled = torch.where(dynamic > 0, logits / dynamic.clamp(min=math.ulp(1.0)), top_only)
    return torch.where(drawable > 1, scaled, logits)


def stage(config: DecodingConfig) -> Step:
    t, spread, exponent = config.temperature, config.dynatemp_range, config.dynatemp_exp
    return lambda logits, counts, rows: apply_dynamic_temperature(logits, t, spread, exponent)
