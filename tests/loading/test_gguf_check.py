"""Hostile, truncated and corrupt GGUF files: each is refused by the header check (`llmgen.loading.gguf_check`)
with one line, before transformers reads a byte of it, in bounded time and memory.

The files are small valid GGUF files written with the gguf package's GGUFWriter, then damaged at a
known place (found by searching for the bytes of a key or tensor name), or at random by hypothesis.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgen.cli import main
from llmgen.errors import ModelError
from llmgen.loading import gguf_check, models

TOKENS_KEY = b"tokenizer.ggml.tokens"
EMBED = b"token_embd.weight"
OUTPUT = b"output.weight"


def gguf_bytes(tmp_path: Path) -> bytes:
    """A small valid GGUF file: strings, a string array, an int array, f32 and f16 tensors."""
    from gguf import GGUFWriter

    path = tmp_path / "base.gguf"
    writer = GGUFWriter(str(path), arch="llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c", "<s>"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 1, 3])
    writer.add_uint32("llama.context_length", 16)
    writer.add_tensor(EMBED.decode(), np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor(OUTPUT.decode(), np.ones((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return gguf_bytes(tmp_path_factory.mktemp("gguf"))


def put_u64(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<Q", value) + data[offset + 8:]


def put_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


def after(data: bytes, needle: bytes) -> int:
    """The offset just past the (only) occurrence of `needle` in the header."""
    index = data.index(needle)
    assert data.find(needle, index + 1) == -1
    return index + len(needle)


# Each damage: (id, function of the valid bytes, a phrase the error must contain).
DAMAGES = [
    ("bad magic", lambda d: b"GGML" + d[4:], "bad magic"),
    ("empty file", lambda d: b"", "truncated"),
    ("header only", lambda d: d[:20], "truncated"),
    ("version 1", lambda d: put_u32(d, 4, 1), "unsupported version 1"),
    ("version 99", lambda d: put_u32(d, 4, 99), "unsupported version 99"),
    ("tensor count 2**64-1", lambda d: put_u64(d, 8, 2**64 - 1), "absurd tensor count"),
    ("tensor count 10**6", lambda d: put_u64(d, 8, 10**6), "absurd tensor count"),
    ("metadata count 2**63", lambda d: put_u64(d, 16, 2**63), "absurd metadata count"),
    ("metadata count +1", lambda d: put_u64(d, 16, struct.unpack_from("<Q", d, 16)[0] + 1), "not a valid GGUF"),
    ("key length 2**62", lambda d: put_u64(d, 24, 2**62), "at most 65535"),
    ("key length past the end", lambda d: put_u64(d, 24, 60000), "truncated"),
    ("string array length 2**60", lambda d: put_u64(d, after(d, TOKENS_KEY) + 8, 2**60), "absurd array length"),
    ("string array length +1000", lambda d: put_u64(d, after(d, TOKENS_KEY) + 8, 1004), "absurd array length"),
    ("string item length 2**63", lambda d: put_u64(d, after(d, TOKENS_KEY) + 16, 2**63), "truncated"),
    ("unknown value type", lambda d: put_u32(d, after(d, TOKENS_KEY), 77), "unknown value type 77"),
    ("tensor name too long", lambda d: put_u64(d, d.index(EMBED) - 8, 5000), "at most 63"),
    ("tensor with 9 dimensions", lambda d: put_u32(d, after(d, EMBED), 9), "9 dimensions"),
    ("tensor dimension 2**40", lambda d: put_u64(d, after(d, EMBED) + 4, 2**40), "truncated file or absurd size"),
    ("tensor dimensions overflow", lambda d: put_u64(put_u64(d, after(d, EMBED) + 4, 2**62), after(d, EMBED) + 12,
                                                    2**62), "absurd dimensions"),
    ("unknown tensor type", lambda d: put_u32(d, after(d, EMBED) + 20, 1234), "unknown ggml type 1234"),
    ("tensor offset past the end", lambda d: put_u64(d, after(d, OUTPUT) + 24, 2**20), "truncated file"),
    ("misaligned tensor offset", lambda d: put_u64(d, after(d, OUTPUT) + 24, 130), "not aligned"),
    ("truncated tensor data", lambda d: d[:-16], "truncated file"),
    ("truncated in the tensor infos", lambda d: d[:after(d, OUTPUT) + 6], "truncated"),
]


def test_the_valid_files_pass(base: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(base)
    header = gguf_check.check(path)
    assert (header.version, header.tensor_count, header.architecture) == (3, 2, "llama")
    assert header.data_bytes == 4 * 8 * 4 + 4 * 8 * 2  # f32 (128 bytes: aligned already), then f16
    embedded = gguf_check.check(models.resolve(models.DEFAULT_MODEL).location)
    assert embedded.tensor_count == 272 and embedded.architecture == "llama"


@pytest.mark.parametrize("damage,needle", [(d[1], d[2]) for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_damaged_gguf_is_one_model_error(base: bytes, tmp_path: Path, damage, needle: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(damage(base))
    tracemalloc.start()
    try:
        with pytest.raises(ModelError) as caught:
            gguf_check.check(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and needle in message, message
    assert peak < 2_000_000, f"the check allocated {peak} bytes"  # whatever the header claims


@pytest.mark.parametrize("name", ["bad magic", "tensor count 2**64-1", "string array length 2**60",
                                  "tensor dimension 2**40", "truncated tensor data"])
def test_cli_refuses_damaged_gguf_in_one_line_without_touching_transformers(
        base: bytes, tmp_path: Path, monkeypatch, capsys, name: str) -> None:
    import transformers

    def must_not_run(*args, **kwargs):
        raise AssertionError("transformers was handed a file the header check should have refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_run)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", must_not_run)
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path / "cache"))
    damage, needle = next((d[1], d[2]) for d in DAMAGES if d[0] == name)
    path = tmp_path / "hostile.gguf"
    path.write_bytes(damage(base))
    code = main(["generate", "-m", str(path), "hi"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("llmgen: error: ") and "not a valid GGUF file" in lines[0] and needle in lines[0]
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


INTERESTING_U64 = [0, 1, 2, 3, 4, 31, 32, 33, 64, 255, 2**16, 2**31 - 1, 2**32 - 1, 2**32, 2**62, 2**63 - 1,
                   2**63, 2**64 - 1]


@st.composite
def mutations(draw: st.DrawFn, size: int, header_end: int) -> list[tuple[str, int, int]]:
    """A few edits aimed at the header: random bytes, "interesting" u64/u32 values, a truncation."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "u64", "u32", "truncate"]))
        offset = draw(st.integers(0, header_end))
        if kind == "byte":
            edits.append((kind, offset, draw(st.integers(0, 255))))
        elif kind == "u64":
            edits.append((kind, offset, draw(st.sampled_from(INTERESTING_U64) | st.integers(0, 2**64 - 1))))
        elif kind == "u32":
            edits.append((kind, offset, draw(st.sampled_from([0, 1, 2, 3, 4, 8, 9, 12, 13, 2**31, 2**32 - 1])
                                             | st.integers(0, 2**32 - 1))))
        else:
            edits.append((kind, draw(st.integers(0, size)), 0))
    return edits


def apply(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    for kind, offset, value in edits:
        if kind == "byte" and offset < len(data):
            data = data[:offset] + bytes([value]) + data[offset + 1:]
        elif kind == "u64" and offset + 8 <= len(data):
            data = put_u64(data, offset, value)
        elif kind == "u32" and offset + 4 <= len(data):
            data = put_u32(data, offset, value)
        elif kind == "truncate":
            data = data[:offset]
    return data


def test_fuzzed_headers_give_a_header_or_one_model_error_quickly(base: bytes, tmp_path: Path) -> None:
    """Property: for any few edits to the header, `check` returns or raises ModelError (nothing else),
    within 0.5 s, allocating under 2 MB, whatever sizes the edits claim."""
    header_end = gguf_check.check(_write(tmp_path / "base.gguf", base)).data_start
    path = tmp_path / "fuzz.gguf"

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(edits=mutations(len(base), header_end))
    def prop(edits: list[tuple[str, int, int]]) -> None:
        _write(path, apply(base, edits))
        started = time.perf_counter()
        tracemalloc.start()
        try:
            gguf_check.check(path)
        except ModelError as err:
            assert "\n" not in str(err)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert time.perf_counter() - started < 0.5
        assert peak < 2_000_000

    prop()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
