"""Tiny models for the tests, built here and saved through the real save/load path
(safetensors + tokenizer files), so that llmgen loads them exactly as it loads a user's model.

- `char_model`: a llama-like model over a 12-token character vocabulary (exact distribution tests).
- `draft_model`: another model over the same tokenizer, with different weights (speculative tests).
- `wide_model`: a tiny llama over the embedded SmolLM2 tokenizer (49,152 tokens, real chat template).
- `embedded`: the embedded SmolLM2-135M itself, converted once into a cache under tests/.cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# NOTE: one thread: on a shared 2-core machine two OpenMP threads can stall a forward ~30x.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
# NOTE: a persistent cache across local runs (CI starts from a clean clone and converts once).
os.environ.setdefault("LLMGEN_CACHE_DIR", str(CACHE / "llmgen"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# NOTE: the CLI's --engine auto runs a .gguf (the embedded model included) on llama.cpp when it is installed;
# the tests that compare with HF or exercise the torch paths expect torch. The llama.cpp engine's own tests
# pass --engine explicitly (tests/test_engine_llamacpp*.py).
os.environ.setdefault("LLMGEN_ENGINE", "torch")
# NOTE: γ = auto reads this verify-cost curve (a tiny torch model's: nearly flat) instead of measuring the engine
os.environ.setdefault("LLMGEN_VERIFY_COST", "1:1,2:1.05,4:1.1,8:1.2,16:1.4")

from tiny_models import VOCAB, build_char_tokenizer, build_llama  # noqa: E402


@pytest.fixture(scope="session")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("char-target")
    build_char_tokenizer(path)
    build_llama(path, VOCAB, seed=1)
    return path


@pytest.fixture(scope="session")
def draft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("char-draft")
    build_char_tokenizer(path)
    build_llama(path, VOCAB, seed=2, layers=1)
    return path


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2, converted to safetensors once (about 20-30 s the first time)."""
    from llmgen.loading import models

    resolved = models.resolve(models.DEFAULT_MODEL)
    return models.convert_gguf(Path(resolved.location))


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("wide")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    tokenizer.save_pretrained(path)
    build_llama(path, len(tokenizer), seed=3, hidden=64, heads=4, kv_heads=4, context=512,
                bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)
    return path


@pytest.fixture(scope="session")
def embedded(embedded_dir: Path):
    from llmgen.loading import models

    return models.load(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def long_char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The char model with a long context, for runs that must still be going when interrupted."""
    path = tmp_path_factory.mktemp("char-long")
    build_char_tokenizer(path)
    build_llama(path, VOCAB, seed=1, context=16384)
    return path


@pytest.fixture(scope="session")
def char_lm(char_model: Path):
    """The character-level tiny Llama, loaded (float32, the torch engine)."""
    from llmgen.loading import models

    return models.load(str(char_model))


@pytest.fixture(scope="session")
def wide_lm(wide_model: Path):
    """The tiny Llama with the embedded model's tokenizer, loaded."""
    from llmgen.loading import models

    return models.load(str(wide_model))
