"""One sequence's KV cells, copied out of a llama.cpp context and back into any other one.

What uses it: the prefix cache (`prefix.py`), prompt-cache files (`loading/prompt_cache.py`), a row
prefilled on its own and then joining a batch (chunked prefill), and a context that grows.

llama.cpp writes a KV cache's state as (llama-kv-cache.cpp, `state_write`):

    u32 n_stream, then for each stream:
        u32 cell_count; if cell_count > 0:
            cell_count x (i32 pos, u32 n_seq_id, n_seq_id x i32 seq_id)          the cells' metadata
            u32 v_trans, u32 n_layer
            n_layer x (i32 type, u64 row_size, cell_count x row_size bytes)      keys
            n_layer x (i32 type, u64 row_size, cell_count x row_size bytes)      values, or with v_trans:
            n_layer x (i32 type, u32 elem_size, u32 n_embd, n_embd x cell_count x elem_size bytes)

A model with a sliding window (Gemma 3) has two such caches, one after the other. A sequence's state
(`llama_state_seq_get_data`) is u32 magic, i32 seq_id, then that with only the sequence's cells; a whole
context's state (`llama_state_get_data`) is the architecture's name (u32 length, bytes), then that.

A `CellState` keeps, for each KV cache, the bytes of the one stream that holds the sequence (cell count
included): its *payload*. `blob(n_stream)` rebuilds a sequence state for a context of any number of
streams: llama.cpp restores a sequence's cells into the stream of the sequence it is restored to,
whichever stream of the blob they came in, but only from a blob of its own stream count.

NOTE: a sequence's own state leaves out the cells that its sliding window masks. Restored, the rest land
in cells 0.. of the stream instead of at their positions, and the attention's sums then run over other
cells than after a fresh prefill (the batch-invariance NOTE of `llamacpp.py`). So a sequence longer than
the window is copied out of the *whole context's* state, which keeps every cell: restored, position p is
in cell p again, as after a prefill.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_EMPTY = _U32.pack(0)  # a stream without cells: cell_count 0
MAGIC = 0xAF143CD8  # a sequence state's first u32 (llama-context.cpp's io_magic)


class StateFormatError(Exception):
    """A state blob that does not read as this module expects (another llama.cpp, or cells with extras)."""


@dataclass(frozen=True)
class CellState:
    """A sequence's cells: one payload per KV cache (see the module docstring), uint8 arrays.

    NOTE: the arrays are views of the buffer llama.cpp wrote into where they fill most of it (a sequence's
    own state), so a copy out is one memcpy by llama.cpp and nothing more; `blob` makes one more."""

    payloads: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.payloads)

    def blob(self, n_stream: int) -> np.ndarray:
        """A sequence state for a context of `n_stream` streams (uint8)."""
        parts: list[bytes | np.ndarray] = [struct.pack("<Ii", MAGIC, 0)]
        for payload in self.payloads:
            parts += [_U32.pack(n_stream), payload, _EMPTY * (n_stream - 1)]
        return np.concatenate([np.frombuffer(p, dtype=np.uint8) if isinstance(p, bytes) else p for p in parts])


def _streams(buf: memoryview, offset: int) -> tuple[list[tuple[int, int, int]], int]:
    """One KV cache's state from `offset`: (start, end, cell_count) of each stream's bytes, and where it ends."""
    (n_stream,) = _U32.unpack_from(buf, offset)
    if not 1 <= n_stream <= 4096:
        raise StateFormatError(f"{n_stream} streams")
    offset += 4
    streams = []
    for _ in range(n_stream):
        start = offset
        (cells,) = _U32.unpack_from(buf, offset)
        offset += 4
        if cells:
            for _ in range(cells):  # metadata: pos, n_seq_id, the seq_ids
                (n_seq,) = _U32.unpack_from(buf, offset + 4)
                offset += 8 + 4 * n_seq
            v_trans, n_layer = struct.unpack_from("<II", buf, offset)
            if v_trans > 1 or not 1 <= n_layer <= 4096:
                raise StateFormatError(f"v_trans {v_trans}, {n_layer} layers")
            offset += 8
            for _ in range(n_layer):  # keys
                (row,) = _U64.unpack_from(buf, offset + 4)
                offset += 12 + cells * row
            for _ in range(n_layer):  # values
                if v_trans:
                    size, n_embd = struct.unpack_from("<II", buf, offset + 4)
                    offset += 12 + n_embd * cells * size
                else:
                    (row,) = _U64.unpack_from(buf, offset + 4)
                    offset += 12 + cells * row
        if offset > len(buf):
            raise StateFormatError("truncated")
        streams.append((start, offset, cells))
    return streams, offset


def _payloads(buf: memoryview, offset: int, stream: int | None, array: np.ndarray | None = None) -> CellState:
    """The payload of stream `stream` (None: the one stream with cells) of every KV cache from `offset`:
    views of `array` (the same bytes as `buf`) when given and the payloads fill most of it, else copies."""
    spans = []
    try:
        while offset < len(buf):
            streams, offset = _streams(buf, offset)
            if stream is None:
                held = [(start, end) for start, end, cells in streams if cells]
                if len(held) > 1:
                    raise StateFormatError("a sequence in two streams")
                start, end = held[0] if held else (0, 0)
            else:
                start, end, _ = streams[stream]
            spans.append((start, end))
    except struct.error as err:
        raise StateFormatError(str(err)) from None
    if offset != len(buf) or not spans:
        raise StateFormatError("trailing bytes")
    source = array if array is not None else np.frombuffer(buf, dtype=np.uint8)
    views = 2 * sum(end - start for start, end in spans) > len(buf)  # else copy: do not keep a big buffer alive
    empty = np.frombuffer(_EMPTY, dtype=np.uint8)
    return CellState(tuple((source[start:end] if views else source[start:end].copy()) if end > start else empty
                           for start, end in spans))


def save_sequence(lib: Any, context: Any, seq_id: int, whole: bool) -> CellState:
    """Copy sequence `seq_id`'s cells out of `context` (a llama_context pointer). `whole`: read them from
    the whole context's state, which keeps the cells a sliding window masks (the module's NOTE); the
    sequence's stream is then stream `seq_id` (one stream per sequence)."""
    if whole:
        size = lib.llama_state_get_size(context)
        array = np.empty(size, dtype=np.uint8)  # NOTE: not zeroed: llama.cpp writes every byte it reports
        written = lib.llama_state_get_data(context, array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size)
    else:
        size = lib.llama_state_seq_get_size(context, seq_id)
        array = np.empty(size, dtype=np.uint8)
        written = lib.llama_state_seq_get_data(context, array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                               size, seq_id)
    array = array[:written]
    view = memoryview(array.data)
    if whole:  # the architecture's name first
        (length,) = _U32.unpack_from(view, 0)
        return _payloads(view, 4 + length, seq_id, array)
    if written < 8 or _U32.unpack_from(view, 0)[0] != MAGIC:
        raise StateFormatError("no sequence-state magic")
    return _payloads(view, 8, None, array)


def load_sequence(lib: Any, context: Any, seq_id: int, state: CellState, n_stream: int) -> bool:
    """Restore `state`'s cells as sequence `seq_id` of `context` (which has `n_stream` streams); False if
    llama.cpp refused it."""
    blob = state.blob(n_stream)
    pointer = blob.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    return bool(lib.llama_state_seq_set_data(context, pointer, len(blob), seq_id))
