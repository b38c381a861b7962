"""How `--help` reads: like `git` or `rg` help, not like a type signature.

Typer's Rich help prints a type next to every option, flags included (`--greedy <bool>`,
`--help -h <bool>`), and wraps a default given as text in parentheses (`[default: (1.0)]`). Here,
for every llmgen command:

- a flag (`--greedy`, `--chat/--raw`, `--help`) shows no metavariable: it takes no value;
- an option that takes a value shows its own `metavar` if it declares one (`--gamma N|auto`), else
  one named after its type: FLOAT, N (an integer), TEXT, FILE (a path); a choice lists its values;
- a default reads `[default: 1.0]`;
- an argument is named in capitals (`PROMPT`), in the usage line and in its panel, with no type.

The commands are built with `Command` and `Group` (`cls=` in `llmgen.cli`); they give their
parameters the display methods below. Parsing is untouched: only how a parameter is shown changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_BY_TYPE: dict[Any, str] = {int: "N", float: "FLOAT", str: "TEXT", Path: "FILE"}


def _type_metavar(option: TyperOption, ctx: Any) -> str:
    descriptor = option.type_descriptor
    if descriptor.is_choice:
        return option.display_type(ctx).strip("<>")  # "a|b|c"
    annotation = descriptor.annotation
    if get_origin(annotation) is list:  # a repeatable option: the metavar of one value
        annotation = get_args(annotation)[0]
    if descriptor.is_path:
        annotation = Path
    return _BY_TYPE.get(annotation, "VALUE")


class HumanOption(TyperOption):
    """A Typer option shown as a person would write it (see the module docstring)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar if self.metavar is not None else _type_metavar(self, ctx)

    def _get_default_string(self, *, ctx: Any, show_default_is_str: bool, default_value: Any) -> str:
        if show_default_is_str:  # NOTE: Typer would print it as "(text)"
            return str(self.show_default)
        return super()._get_default_string(ctx=ctx, show_default_is_str=False, default_value=default_value)


class HumanArgument(TyperArgument):
    """A Typer argument named in capitals, without a type next to it."""

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else self.name.upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return f"{name}..." if self.nargs != 1 else name


_HUMAN: dict[type, type] = {TyperOption: HumanOption, TyperArgument: HumanArgument}


def _humanize(params: list[Any]) -> list[Any]:
    for param in params:
        human = _HUMAN.get(type(param))
        if human is not None:
            # NOTE: Typer builds its parameters itself and offers no hook for their class. The
            # subclasses add no state and override display methods only, so switching the class of
            # an existing object is safe.
            param.__class__ = human
    return params


class Command(TyperCommand):
    """A Typer command whose help reads like `git` or `rg` help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _humanize(super().get_params(ctx))


class Group(TyperGroup):
    """A Typer group (the root, `models`, `presets`) whose help reads like `git` or `rg` help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _humanize(super().get_params(ctx))
