"""Fixtures of the serve tests: a server over each tiny model of tests/conftest.py (helpers: serving.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving import start, tiny_with_lead


@pytest.fixture(scope="module")
def char_server(char_lm) -> Iterator[tuple[object, str]]:
    service, context = start(char_lm)
    with context as url:
        yield service, url


@pytest.fixture(scope="module")
def wide_server(wide_lm) -> Iterator[tuple[object, str]]:
    service, context = start(wide_lm)
    with context as url:
        yield service, url


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def served(request, tmp_path_factory: pytest.TempPathFactory):
    """(loaded, url) on each engine: a tiny model whose chat template reads a variable `lead`, served."""
    if request.param == "llamacpp":
        pytest.importorskip("llama_cpp")
    loaded = tiny_with_lead(request.param, tmp_path_factory.mktemp(f"lead-{request.param}"))
    _, context = start(loaded)
    with context as url:
        yield loaded, url
