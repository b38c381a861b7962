"""Typed errors raised by the core; the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class LlmgenError(Exception):
    """Base class: `str(err)` is the one-line message shown to the user."""

    exit_code: int = 1


class UsageError(LlmgenError):
    """Bad option values, bad combinations, bad presets: the user must change the command."""

    exit_code = 2


class ConfigError(UsageError):
    """An option value out of range or of the wrong type (from a flag or a preset).

    As data, for front-ends that name a field in their own words (serve its request field, a preset
    its line): `field`, the `DecodingConfig` field at fault, when there is one; `reason`, the message
    without the field's name ("0 must be >= 1"); `key`, the key as it was spelt, when it came from one.
    """

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.key: str | None = None

    @classmethod
    def invalid(cls, field: str, reason: str) -> ConfigError:
        """"invalid value for FLAG: REASON" (FLAG is the field with dashes), with field and reason as data."""
        return cls(f"invalid value for {field.replace('_', '-')}: {reason}", field=field, reason=reason)


class PresetError(UsageError):
    """A preset that cannot be found, parsed or applied. The message names file and line."""


class PromptError(UsageError):
    """An empty prompt, or one that does not fit the model's context."""


class ModelError(LlmgenError):
    """A model that cannot be resolved, read, trusted or used."""


class IncompatibleDraftError(ModelError):
    """A draft model whose vocabulary differs from the target's."""
