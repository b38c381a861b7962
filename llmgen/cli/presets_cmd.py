"""`llmgen presets list|show`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from llmgen import presets

app = typer.Typer(help="Built-in and user presets (TOML files of decoding options).", no_args_is_help=True)


@app.command("list")
def list_presets() -> None:
    """List the presets: built-in ones, then the user's (which shadow built-ins of the same name)."""
    table = Table("name", "description", "settings", "file")
    for name, path in sorted(presets.available().items()):
        preset = presets.load(str(path))
        settings = ", ".join(f"{k}={v}" for k, v in preset.values.items())
        table.add_row(name, preset.description, settings, str(path))
    Console().print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Preset name or path.")) -> None:
    """Print a preset's TOML file."""
    preset = presets.load(name)
    print(f"# {preset.path}")
    with open(preset.path, encoding="utf-8") as handle:
        print(handle.read(), end="")
