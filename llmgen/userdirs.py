"""Where llmgen keeps the user's files: its config dir (models.toml, presets) and its cache dir
(conversions of GGUF files). Environment variables override the XDG defaults."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    env = os.environ.get("LLMGEN_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "llmgen"


def cache_dir() -> Path:
    env = os.environ.get("LLMGEN_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmgen"
