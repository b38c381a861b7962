"""Presets: TOML files whose keys are decoding option names (`top_p` or `top-p`).

A preset is named (a built-in one, or one in the user's `presets/` config dir) or given as a path.
Built-in presets ship inside the package (`llmgen/presets/*.toml`, a copy of the repo's `presets/`).
Every error names the file, and the line where it can.

    # presets/precise.toml
    description = "Low temperature, tight nucleus."
    temperature = 0.2
    top_p = 0.9
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llmgen.decoding.config import DecodingConfig, parse_keys
from llmgen.errors import ConfigError, PresetError, UsageError
from llmgen.userdirs import config_dir

MAX_PRESET_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Preset:
    name: str
    path: str
    description: str
    values: dict[str, Any]  # canonical field name -> checked value
    backend: str | None = None  # [backend] name = "hf" | "vllm"
    backend_options: dict[str, Any] = field(default_factory=dict)  # [backend.vllm]: vLLM engine keys
    threads: int | None = None  # threads = N: a forward's threads, as --threads (which wins over it)


def builtin_dir() -> Path:
    return Path(str(resources.files("llmgen") / "presets"))


def user_dir() -> Path:
    return config_dir() / "presets"


def available() -> dict[str, Path]:
    """Preset name -> file; user presets shadow built-in ones of the same name."""
    found: dict[str, Path] = {}
    for directory in (builtin_dir(), user_dir()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found[path.stem] = path
    return found


def find(name_or_path: str) -> Path:
    """A path ending in .toml is read as given; anything else must be a plain preset name."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PresetError(f"preset file not found: {path}")
        return path
    if not _NAME.match(name_or_path):
        raise PresetError(f"invalid preset name {name_or_path!r}: use a name from 'llmgen presets list' "
                          "or a path ending in .toml")
    found = available().get(name_or_path)
    if found is None:
        raise PresetError(f"unknown preset {name_or_path!r}; available: {', '.join(sorted(available()))}")
    return found


def _line_of(text: str, key: str) -> int | None:
    name = rf"[\"']?{re.escape(key)}[\"']?"
    pattern = re.compile(rf"^[ \t]*(?:{name}[ \t]*=|\[+[ \t]*{name}[ \t]*[\].])", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def load(name_or_path: str) -> Preset:
    path = find(name_or_path)
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise PresetError(f"{path}: preset too large (over {MAX_PRESET_BYTES // 1024} KiB)")
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PresetError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise PresetError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        if "(at line" not in message:  # "at end of document": the error is on the last line
            message = f"{message} (at line {max(1, text.count(chr(10)) + (not text.endswith(chr(10))))})"
        raise PresetError(f"{path}: invalid TOML: {message}") from None
    backend, backend_options = _backend(data.pop("backend", None), path, text)
    threads = data.pop("threads", None)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise PresetError(f"{path}:{_line_of(text, 'threads') or '?'}: threads must be an integer >= 1, "
                          f"not {threads!r}")
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise PresetError(f"{path}:{_line_of(text, 'description')}: description must be a string")
    try:
        values = parse_keys(data)
    except ConfigError as err:
        raise PresetError(f"{path}:{(err.key and _line_of(text, err.key)) or '?'}: {err}") from None
    try:
        DecodingConfig(**values)  # range checks, with the file named
    except ConfigError as err:
        key = err.field or ""
        line = (key and (_line_of(text, key.replace("_", "-")) or _line_of(text, key))) or "?"
        raise PresetError(f"{path}:{line}: {err}") from None
    return Preset(path.stem, str(path), description, values, backend, backend_options, threads)


def _backend(table: Any, path: Path, text: str) -> tuple[str | None, dict[str, Any]]:
    """The optional `[backend]` table: `name = "hf" | "vllm"`, and `[backend.vllm]` engine-only keys.

        [backend]
        name = "vllm"
        [backend.vllm]
        tensor_parallel_size = 2
    """
    if table is None:
        return None, {}
    where = f"{path}:{_line_of(text, 'backend') or '?'}"
    if not isinstance(table, dict):
        raise PresetError(f"{where}: backend must be a table: [backend] name = \"hf\" or \"vllm\"")
    from llmgen.backends import BACKENDS
    from llmgen.backends.vllm import check_engine_options

    unknown = set(table) - {"name", "vllm"}
    if unknown:
        raise PresetError(f"{where}: unknown key {sorted(unknown)[0]!r} in [backend] (known: name, vllm)")
    name = table.get("name")
    if name is not None and name not in BACKENDS:
        raise PresetError(f"{where}: backend name must be one of {', '.join(BACKENDS)}, not {name!r}")
    options = table.get("vllm", {})
    if not isinstance(options, dict):
        raise PresetError(f"{where}: [backend.vllm] must be a table of vLLM engine keys")
    try:
        return name, check_engine_options(options, f"{path}:{_line_of(text, 'vllm') or '?'}: [backend.vllm]")
    except UsageError as err:
        raise PresetError(str(err)) from None
