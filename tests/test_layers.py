"""The house's shape: the floors of docs/design.md hold, and no module imports one that imports it back,
function-level imports included (grimp reads every import statement, not only the top-level ones)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="the lint extra (import-linter) is not installed")

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("llmgen")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if importer.startswith(f"{imported}.") or imported.startswith(f"{importer}."):
                continue  # a package and its own modules: __init__ re-exports are not cycles
            if graph.chain_exists(importer=imported, imported=importer):
                cycles.append((importer, imported))
    assert not cycles, f"modules that import each other, directly or through others: {cycles[:5]}"


def test_the_floors_and_no_torch_in_the_cli() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("lint-imports is not installed")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
