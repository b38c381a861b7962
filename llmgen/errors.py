"""Typed errors raised by the core; the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class LlmgenError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code: int = 1


class UsageError(LlmgenError):
    """Bad option values, bad combinations, bad presets: the user must change the command."""

    exit_code = 2


class ConfigError(UsageError):
    """An option value out of range or of the wrong type (from a flag or a preset)."""


class PresetError(UsageError):
    """A preset that cannot be found, parsed or applied. The message names file and line."""


class PromptError(UsageError):
    """An empty prompt, or one that does not fit the model's context."""


class ModelError(LlmgenError):
    """A model that cannot be resolved, read, trusted or used."""


class IncompatibleDraftError(ModelError):
    """A draft model whose vocabulary differs from the target's."""
