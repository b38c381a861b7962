"""The torch engine: transformers' forward (or the lean int4 Llama of `quant/`) and its KV caches.

`TorchEngine` makes the two caches of the engine interface (`base.py`): `CachedLM` for one sequence,
and `RowCache` (or `SerialRows`) for batched rows. This is the only code that builds or reshapes a
torch KV cache.

Many sequences in one KV cache, left-padded (`RowCache`).

Layout. The cache holds `rows` sequences of one common width W. Row r keeps its `lengths[r]` real
tokens in the last columns and padding before them:

    row 0:  [pad pad  t0  t1  t2 ]      lengths = [3, 5, 4]
    row 1:  [ t0  t1  t2  t3  t4 ]      attention mask[r, c] = c >= W - lengths[r]
    row 2:  [pad  t0  t1  t2  t3 ]      next position of row r = lengths[r]

Padding sits only at the left, so one decode step appends one column to every row, and the mask
and positions follow from `lengths` alone. Three operations keep that layout:

- `add(prompts)`: prefill new rows (left-padded among themselves) and append them; when the new rows
  and the old ones differ in width, the narrower side gets zero columns on its left (masked).
- `step(tokens)`: one token per row; returns each row's next-token logits.
- `select(indices)`: keep (or repeat) rows by index: drop finished rows, or expand one prefilled
  prompt to N samples. Columns that have become padding in every row are cut from the left.

Another backend (a static, position-indexed cache) can provide the same three operations and the
`rows` count; `batch.py` uses nothing else. `SerialRows` does so for a model with its own
single-sequence cache, one forward per row. The model call is the HF one:
`model(input_ids, attention_mask, position_ids, cache=..., use_cache=True, logits_to_keep=1).logits`.

NOTE: positions of left padding are set to 1, as HF `generate()` sets them, so that a greedy batch
equals HF's on the same padded batch bit for bit; padded columns are masked, so they never matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llmgen.errors import ModelError
from llmgen.loading.engines import base
from llmgen.loading.engines.base import RowsCache, SerialRows, Start


class TorchCells:
    """A copy of one sequence's KV cache (`engines.base.Cells`): each layer's keys and values
    [1, kv_heads, length, head_dim]."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]]) -> None:
        self.layers = layers
        self.length = int(layers[0][0].shape[-2]) if layers else 0
        self.nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def _plain_layers(cache: Any) -> list[Any] | None:
    """The cache's layers, or None if one of them keeps more than keys and values (a sliding window)."""
    layers = list(cache.layers)
    if any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        return None
    return layers


def copy_out(cache: Any, row: int = 0, length: int | None = None) -> TorchCells | None:
    """Row `row`'s last `length` columns (all of them by default) of every layer, copied."""
    layers = _plain_layers(cache)
    if not layers:
        return None
    width = int(layers[0].keys.shape[-2])
    start = 0 if length is None else width - length
    return TorchCells([(layer.keys[row:row + 1, :, start:].clone(), layer.values[row:row + 1, :, start:].clone())
                       for layer in layers])


def copy_in(cache: Any, cells: base.Cells, length: int) -> None:
    """Fill an empty cache with the first `length` positions of `cells`."""
    assert isinstance(cells, TorchCells), "a torch cache loads torch cells"
    if hasattr(cache, "reserve"):  # the lean int4 Llama's StaticCache: its layers can be assigned
        cache.reserve(1, length)
        for layer, (keys, values) in zip(cache.layers, cells.layers):
            layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]
        return
    for index, (keys, values) in enumerate(cells.layers):  # a transformers DynamicCache
        cache.update(keys[:, :, :length].clone(), values[:, :, :length].clone(), index)


class CachedLM:
    """A causal LM plus the KV cache of the one sequence it is reading."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.cache = self._empty()
        self.length = 0  # tokens in the cache

    def _empty(self) -> Any:
        if hasattr(self.model, "new_cache"):  # a model with its own cache (`quant.llama.LeanLlama`)
            return self.model.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def save(self) -> TorchCells | None:
        """A copy of the cache (None for a cache with sliding-window layers)."""
        return copy_out(self.cache) if self.length else None

    def load(self, cells: base.Cells, length: int) -> None:
        """Hold the first `length` tokens of `cells`."""
        self.cache = self._empty()
        copy_in(self.cache, cells, length)
        self.length = length

    @torch.inference_mode()
    def forward(self, token_ids: Sequence[int], all_logits: bool = False) -> Tensor:
        """Append `token_ids` to the sequence; return float32 logits [k, vocab].

        k is len(token_ids) with `all_logits`, else 1 (only the last position is projected to the
        vocabulary, which saves most of the lm-head work in prefill).
        """
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)  # [1, k]
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True,
                         logits_to_keep=0 if all_logits else 1)
        self.length += ids.shape[1]
        return out.logits[0].float()  # [k, vocab]

    def rollback(self, length: int) -> None:
        """Forget every token after the first `length`."""
        if length < self.length:
            self.cache.crop(length - self.length)  # NOTE: transformers 5 crop() takes a negative count
            self.length = length



class RowCache:
    """A causal LM plus the left-padded KV cache of the rows it is decoding."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.cache = self._empty_cache()
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)  # [rows] real tokens per row

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        return int(self.lengths.max()) if self.rows else 0

    def _empty_cache(self) -> Any:
        if hasattr(self.model, "new_cache"):  # the lean int4 Llama: its own cache, with the same layer view
            return self.model.new_cache()
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _mask(self, lengths: Tensor, width: int) -> Tensor:
        columns = torch.arange(width, device=self.device)[None]  # [1, W]
        return (columns >= width - lengths[:, None]).long()  # [rows, W]

    @torch.inference_mode()
    def add(self, prompts: Sequence[Sequence[int]], starts: Sequence[Start | None] | None = None) -> Tensor:
        """Prefill `prompts` as new rows after the existing ones; return their logits [len(prompts), vocab].
        A row with a start (cells, n) gets the first n positions of those cells, then its prompt from n, alone."""
        starts = starts or [None] * len(prompts)
        out: list[Tensor] = []
        i = 0
        while i < len(prompts):  # NOTE: in the prompts' order: row before + i is prompt i
            start = starts[i]
            if start is not None:
                out.append(self._add_from(prompts[i], start))
                i += 1
                continue
            j = i
            while j < len(prompts) and starts[j] is None:
                j += 1
            out.extend(self._add(prompts[i:j]))  # a run of fresh prompts, one padded prefill
            i = j
        return torch.stack(out)  # [k, vocab]

    def _add_from(self, prompt: Sequence[int], start: Start) -> Tensor:
        """One new row: the first n positions from `start`'s cells, the rest of `prompt` prefilled; its logits [vocab]."""
        cells, n = start
        cache = self._empty_cache()
        copy_in(cache, cells, n)
        ids = torch.tensor([list(prompt)[n:]], dtype=torch.long, device=self.device)  # [1, k]
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=self.device)  # [1, n + k]
        positions = torch.arange(n, len(prompt), device=self.device)[None]  # [1, k]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        lengths = torch.tensor([len(prompt)], dtype=torch.long, device=self.device)
        if self.rows:
            self._append(cache, lengths)
        else:
            self.cache, self.lengths = cache, lengths
        return out.logits[0, -1].float()  # [vocab]

    def save(self, row: int) -> TorchCells | None:
        """A copy of row `row`'s positions (its padding left out)."""
        return copy_out(self.cache, row, int(self.lengths[row]))

    def _add(self, prompts: Sequence[Sequence[int]]) -> Tensor:
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=self.device)
        width = int(lengths.max())
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)  # [k, W]
        for r, prompt in enumerate(prompts):
            ids[r, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask = self._mask(lengths, width)  # [k, W]
        positions = (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 1)  # [k, W], as HF generate()
        cache = self._empty_cache() if self.rows else self.cache
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        if self.rows:
            self._append(cache, lengths)
        else:
            self.cache, self.lengths = cache, lengths
        return out.logits[:, -1].float()  # [k, vocab]

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (`tokens` [rows]); return the next-token logits [rows, vocab]."""
        mask = self._mask(self.lengths + 1, self.width + 1)  # [rows, W + 1]
        out = self.model(input_ids=tokens[:, None].to(self.device), attention_mask=mask,
                         position_ids=self.lengths[:, None], cache=self.cache, use_cache=True, logits_to_keep=1)
        self.lengths = self.lengths + 1
        return out.logits[:, -1].float()  # [rows, vocab]

    def select(self, indices: Sequence[int]) -> None:
        """Keep the rows `indices`, in that order (an index may repeat); cut all-padding columns."""
        if not indices:
            self.cache, self.lengths = self._empty_cache(), self.lengths[:0]
            return
        index = torch.tensor(list(indices), dtype=torch.long, device=self.device)
        width = self.width
        self.lengths = self.lengths[index]
        cut = width - self.width  # leading columns that are padding in every kept row
        for layer in self._layers(self.cache):
            layer.keys = layer.keys[index, :, cut:]
            layer.values = layer.values[index, :, cut:]

    def _append(self, other: Any, lengths: Tensor) -> None:
        """Append the rows of cache `other` (real lengths `lengths`), left-padding the narrower side."""
        old, new = self.width, int(lengths.max())
        width = max(old, new)
        for mine, theirs in zip(self._layers(self.cache), self._layers(other)):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.lengths = torch.cat([self.lengths, lengths])

    @staticmethod
    def _layers(cache: Any) -> list[Any]:
        layers = list(cache.layers)
        for layer in layers:
            # NOTE: sliding-window and linear-attention layers keep other state that a column shift breaks.
            if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
                raise ModelError(f"batched decoding supports full-attention KV caches only, not {type(layer).__name__}")
        return layers


def _pad_left(states: Tensor, width: int) -> Tensor:
    """[rows, heads, w, dim] -> [rows, heads, width, dim] with zeros on the left."""
    missing = width - states.shape[-2]
    if missing <= 0:
        return states
    return torch.nn.functional.pad(states, (0, 0, missing, 0))


TorchRows = RowCache | SerialRows  # this engine's rows
Rows = RowsCache  # what `batch.py` decodes with, on any engine (the protocol of `base.py`)


def row_cache(model: Any) -> TorchRows:
    """The row cache for `model`: one left-padded batch for a transformers model and for the lean int4
    Llama (whose cache shows the same layers); one cache per row for any other model with its own cache."""
    batched = not hasattr(model, "new_cache") or getattr(model, "batched_rows", False)
    return RowCache(model) if batched else SerialRows(lambda: CachedLM(model), model.device)


class TorchEngine:
    """The engine interface over a transformers-style module (`model(input_ids=..., cache=...)`)."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device

    def sequence(self) -> CachedLM:
        return CachedLM(self.model)

    def rows(self, capacity: int = 1) -> TorchRows:
        return row_cache(self.model)  # a left-padded batch grows as rows come; no capacity to set
