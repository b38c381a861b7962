"""The `--draft-cache` file: a `SuffixStore`'s sequences saved at the end of a run and read at the start
of the next (llama.cpp's `llama-lookup` static/dynamic caches, common/ngram-cache.cpp, play this part
there). The sequences are saved rather than the trie: the trie is rebuilt from them in O(tokens · D).

Layout (little-endian):

    b"LLMGEN-SUFFIX-CACHE\\n"                              magic
    one line of JSON: {"version": 1, "tokenizer": <sha256 of the vocabulary>, "vocab_size": V,
                       "lengths": [n_1, ..., n_k]}
    sum(n_j) int32 token ids                              the sequences, oldest first

It is a cache: a file for another tokenizer, or a damaged one, is ignored (`load` says why in one line
and leaves the store as it was); a missing file is a first run. `save` writes a temporary file and
renames it, so a run killed while saving leaves the old file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from llmgen.decoding.speculative.proposers.suffix import SuffixStore

MAGIC = b"LLMGEN-SUFFIX-CACHE\n"
VERSION = 1


def tokenizer_digest(vocab: Mapping[str, int], vocab_size: int) -> str:
    """The vocabulary's identity: sha256 over its (text, id) pairs in id order, and the logits width."""
    h = hashlib.sha256(f"{vocab_size}\n".encode())
    for text, token in sorted(vocab.items(), key=lambda item: item[1]):
        h.update(f"{token}\t{text}\n".encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def save(path: Path, store: SuffixStore, digest: str, vocab_size: int) -> None:
    """Write the store's live sequences to `path`; OSError when it cannot be written."""
    sequences = store.sequences()
    header = {"version": VERSION, "tokenizer": digest, "vocab_size": vocab_size,
              "lengths": [len(s) for s in sequences]}
    tokens = array("i", (t for s in sequences for t in s))
    if tokens.itemsize != 4:  # NOTE: "i" is 4 bytes on every platform we run on; the format says int32
        raise OSError("int32 array items are not 4 bytes here")
    if sys.byteorder != "little":
        tokens.byteswap()
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(MAGIC)
        handle.write(json.dumps(header).encode() + b"\n")
        tokens.tofile(handle)
    os.replace(temporary, path)


def load(path: Path, store: SuffixStore, digest: str, vocab_size: int) -> str | None:
    """Add the file's sequences to `store`. None when they were added or there is no file yet; else the
    one line saying why the file was ignored (the store is then unchanged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"--draft-cache {path}: cannot read it ({err.strerror}); ignored"
    sequences = parse(data, digest, vocab_size)
    if isinstance(sequences, str):
        return f"--draft-cache {path}: {sequences}; ignored"
    add_all(store, sequences)
    return None


def add_all(store: SuffixStore, sequences: Iterable[list[int]]) -> None:
    for sequence in sequences:
        store.close(store.add(sequence))


def parse(data: bytes, digest: str, vocab_size: int) -> list[list[int]] | str:
    """The sequences of a cache file's bytes, or why they cannot be used (one phrase)."""
    if not data.startswith(MAGIC):
        return "not a draft cache (damaged or another format)"
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        return "damaged (no header)"
    try:
        header = json.loads(data[len(MAGIC):end])
        version, their_digest, their_size = header["version"], header["tokenizer"], header["vocab_size"]
        lengths = [int(n) for n in header["lengths"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "damaged (unreadable header)"
    if version != VERSION:
        return f"made by another version of llmgen (format {version!r}, this one reads {VERSION})"
    if their_digest != digest or their_size != vocab_size:
        return "made for another tokenizer"
    body = data[end + 1:]
    if any(n < 0 for n in lengths) or len(body) != 4 * sum(lengths):
        return f"damaged ({len(body)} bytes of tokens, the header says {4 * sum(lengths)})"
    tokens = array("i")
    tokens.frombytes(body)
    if sys.byteorder != "little":
        tokens.byteswap()
    if tokens and not (0 <= min(tokens) and max(tokens) < vocab_size):
        return "damaged (a token id outside the vocabulary)"
    out, at = [], 0
    for n in lengths:
        out.append(tokens[at:at + n].tolist())
        at += n
    return out


def corpus_sequences(text: str, encode: Callable[[str], Sequence[int]]) -> list[list[int]]:
    """A corpus as sequences: one per paragraph (blank-line separated), each encoded without special
    tokens by `encode(text) -> list[int]`. Paragraphs are the unit the store evicts."""
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return [ids for ids in (list(encode(p)) for p in paragraphs if p) if ids]
