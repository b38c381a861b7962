"""Fixtures of the serve tests: a server over each tiny model of tests/conftest.py (helpers: serving.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving import start


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
