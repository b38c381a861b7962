"""`llmgen models list`: the aliases, where each comes from, and whether it is cached."""

from __future__ import annotations

import json as jsonlib

import typer
from rich.console import Console
from rich.table import Table

from llmgen.errors import ModelError
from llmgen.loading import models

app = typer.Typer(help="Model aliases and the conversion cache.", no_args_is_help=True)


@app.command("list")
def list_models(json: bool = typer.Option(False, "--json", help="One JSON object per alias.")) -> None:
    """List the model aliases: built-in ones and those in the user's models.toml."""
    rows = []
    for entry in models.registry().values():
        try:
            resolved = models.resolve(entry.name)
            cached = "yes" if models.is_cached(resolved) else "no"
            where = resolved.location
        except ModelError as err:
            cached, where = "unavailable", str(err)
        rows.append({"alias": entry.name, "description": entry.description, "source": where,
                     "dtype": entry.dtype or "auto", "quant": entry.quant or "none", "origin": entry.origin,
                     "cached": cached})
    if json:
        for row in rows:
            print(jsonlib.dumps(row))
        return
    table = Table("alias", "what it is", "dtype", "quant", "defined in", "cached", "source")
    for row in rows:
        table.add_row(row["alias"], row["description"], row["dtype"], row["quant"], row["origin"], row["cached"],
                      row["source"])
    Console().print(table)
    Console(stderr=True).print(f"registry: {models.config_dir() / 'models.toml'}   cache: {models.cache_dir()}")
