"""Check a GGUF file's header before transformers reads it, with bounded reads and bounded memory.

A GGUF file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) is, in order:

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x   (key: string, value_type u32, value)
    tensor_count x (name: string, n_dims u32, dims u64[n_dims], ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data: each tensor at data_start + offset, ceil-free size dims/block_size * type_size bytes

where a string is a u64 length then that many bytes, and an array value is (item_type u32, count u64,
items). A hostile header can claim 2**64 tensors, a 2**63-byte string or a tensor past the end of the
file; readers that trust those numbers allocate without bound or read garbage. This module walks the
header through a read-only memory map and checks every length against the bytes that are really left
before anything is allocated, so its memory use is O(1) in the counts claimed and O(header) in time.

`check(path)` raises `ModelError` with one line naming the file and the first problem found.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from llmgen.errors import ModelError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # version 1 (u32 counts) is not read by the gguf package either
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 64  # GGML_MAX_NAME, including llama.cpp's terminating NUL: names are < 64 bytes
MAX_KEY_BYTES = 65535
MAX_ARRAY_DEPTH = 2  # arrays of arrays are allowed by the format; deeper nesting is not used

# Value types: fixed-size ones map to their size in bytes; 8 (string) and 9 (array) are variable.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
# The fewest bytes one header entry can take, used to bound counts before looping over them.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset


class GGUFError(Exception):
    """Raised inside the walk; turned into a ModelError naming the file."""


def _quant_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (elements per block, bytes per block), from the gguf package."""
    from gguf import GGML_QUANT_SIZES

    return {int(kind): (int(block), int(size)) for kind, (block, size) in GGML_QUANT_SIZES.items()}


@dataclass(frozen=True)
class Header:
    """What the check learned; the tests use it, the loader only needs the absence of an error."""

    version: int
    tensor_count: int
    kv_count: int
    architecture: str | None
    alignment: int
    data_start: int
    data_bytes: int  # the bytes the tensors need, padding included


class _Cursor:
    """Reads little- or big-endian values from a buffer, never past its end."""

    def __init__(self, buf: mmap.mmap | bytes, endian: str) -> None:
        self.buf, self.endian, self.pos, self.size = buf, endian, 0, len(buf)

    @property
    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left:
            raise GGUFError(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"but the file has {self.left} left")

    def unpack(self, fmt: str, what: str) -> int | float:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack("I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("Q", what))

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def string(self, what: str, limit: int | None = None, keep: bool = True) -> str | None:
        length = self.u64(f"the length of {what}")
        if limit is not None and length > limit:
            raise GGUFError(f"{what} is {length} bytes long (at most {limit} allowed)")
        self.need(length, what)
        start = self.pos
        self.pos += length
        if not keep:
            return None
        try:
            return bytes(self.buf[start:self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} at offset {start} is not UTF-8") from None


def check(path: Path | str) -> Header:
    """Validate the header of the GGUF file at `path`. Raises ModelError on the first problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise GGUFError(f"truncated: {size} bytes is shorter than a GGUF header (24 bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _walk(buf)
    except GGUFError as err:
        raise ModelError(f"{path}: not a valid GGUF file: {err}") from None
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None


def _walk(buf: mmap.mmap | bytes) -> Header:
    if bytes(buf[:4]) != MAGIC:
        raise GGUFError(f"bad magic {bytes(buf[:4])!r} (expected {MAGIC!r})")
    version = struct.unpack_from("<I", buf, 4)[0]
    endian = "<"
    if version & 0xFFFF == 0 and version != 0:  # a big-endian file reads as a huge little-endian number
        endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(f"unsupported version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})")
    cur = _Cursor(buf, endian)
    cur.pos = 8
    tensor_count = cur.u64("the tensor count")
    kv_count = cur.u64("the metadata count")
    # NOTE: bound the counts by the bytes left before looping, so a claim of 2**64 entries fails at once.
    if kv_count > cur.left // _MIN_KV_BYTES:
        raise GGUFError(f"absurd metadata count {kv_count} for a file of {cur.size} bytes")
    if tensor_count > cur.left // _MIN_TENSOR_INFO_BYTES:
        raise GGUFError(f"absurd tensor count {tensor_count} for a file of {cur.size} bytes")

    alignment, architecture = DEFAULT_ALIGNMENT, None
    seen_keys: set[str] = set()
    for index in range(kv_count):
        key = cur.string(f"metadata key {index}", limit=MAX_KEY_BYTES)
        assert key is not None
        if key in seen_keys:
            raise GGUFError(f"duplicate metadata key {key!r}")
        seen_keys.add(key)
        kind = cur.u32(f"the type of {key!r}")
        if key == "general.alignment":
            if kind != _UINT32:
                raise GGUFError("general.alignment must be a u32")
            alignment = cur.u32(key)
            if alignment == 0 or alignment & (alignment - 1):
                raise GGUFError(f"general.alignment {alignment} is not a power of two")
        elif key == "general.architecture" and kind == _STRING:
            architecture = cur.string(key, limit=1024)
        else:
            _skip_value(cur, kind, key, depth=0)

    sizes = _quant_sizes()
    tensors: list[tuple[str, int, int]] = []  # (name, offset, bytes)
    names: set[str] = set()
    for index in range(tensor_count):
        name = cur.string(f"the name of tensor {index}", limit=MAX_NAME_BYTES - 1)
        assert name is not None
        if name in names:
            raise GGUFError(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.u32(f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        dims = [cur.u64(f"a dimension of {name!r}") for _ in range(n_dims)]
        kind = cur.u32(f"the type of {name!r}")
        offset = cur.u64(f"the offset of {name!r}")
        if kind not in sizes:
            raise GGUFError(f"tensor {name!r} has unknown ggml type {kind}")
        block, block_bytes = sizes[kind]
        elements = 1
        for d in dims:
            elements *= d  # NOTE: Python ints do not overflow; the size check below catches absurd dims
        if elements >= 2**63:
            raise GGUFError(f"tensor {name!r} has absurd dimensions {dims}")
        if dims[0] % block:
            raise GGUFError(f"tensor {name!r}: first dimension {dims[0]} is not a multiple of the block "
                            f"size {block} of its type")
        if offset % alignment:
            raise GGUFError(f"tensor {name!r}: offset {offset} is not aligned to {alignment}")
        tensors.append((name, offset, elements // block * block_bytes))

    data_start = -(-cur.pos // alignment) * alignment
    data_bytes = cur.size - data_start
    end = 0
    for name, offset, nbytes in tensors:
        if offset + nbytes > data_bytes:
            raise GGUFError(f"tensor {name!r} needs bytes {offset}..{offset + nbytes} of the data section, "
                            f"but it has {max(0, data_bytes)} (truncated file or absurd size)")
        end = max(end, offset + nbytes)
    return Header(version, tensor_count, kv_count, architecture, alignment, data_start, end)


def _skip_value(cur: _Cursor, kind: int, key: str, depth: int) -> None:
    """Step over one value of type `kind`, checking every length against the bytes left."""
    if kind in _SCALAR_SIZES:
        cur.skip(_SCALAR_SIZES[kind], f"the value of {key!r}")
    elif kind == _STRING:
        cur.string(f"the value of {key!r}", keep=False)
    elif kind == _ARRAY:
        if depth >= MAX_ARRAY_DEPTH:
            raise GGUFError(f"{key!r}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
        item = cur.u32(f"the item type of {key!r}")
        count = cur.u64(f"the length of {key!r}")
        if item in _SCALAR_SIZES:
            cur.skip(count * _SCALAR_SIZES[item], f"the {count} items of {key!r}")
            return
        if item not in (_STRING, _ARRAY):
            raise GGUFError(f"{key!r}: unknown array item type {item}")
        # Strings and arrays take at least 8 bytes (a u64 length, or u32 type + ...), so bound the loop.
        if count > cur.left // 8:
            raise GGUFError(f"{key!r}: absurd array length {count} for the {cur.left} bytes left")
        if item == _STRING:
            _skip_strings(cur, count, key)
            return
        for _ in range(count):
            _skip_value(cur, item, key, depth + 1)
    else:
        raise GGUFError(f"{key!r} has unknown value type {kind}")


def _skip_strings(cur: _Cursor, count: int, key: str) -> None:
    """Step over `count` strings: the hot loop for a tokenizer's vocabulary and merges (~10^5 items)."""
    length_of = struct.Struct(cur.endian + "Q").unpack_from
    buf, pos, size = cur.buf, cur.pos, cur.size
    for index in range(count):
        if pos + 8 > size:
            cur.pos = pos
            raise GGUFError(f"truncated: item {index} of {key!r} at offset {pos} runs past the end of the file")
        pos += 8 + length_of(buf, pos)[0]
        if pos > size:
            raise GGUFError(f"truncated: item {index} of {key!r} runs past the end of the file")
    cur.pos = pos
