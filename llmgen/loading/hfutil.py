"""Small helpers around transformers: keep its logging and progress bars quiet, set environment
variables for one call, and shorten its exceptions to one line, the way llmgen reports errors."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' logging, warnings and tqdm bars: our output is ours."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with environment(TQDM_DISABLE="1"), warnings.catch_warnings():  # the GGUF reader uses tqdm directly
        warnings.simplefilter("ignore")
        yield


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def warn(message: str) -> None:
    print(f"llmgen: warning: {message}", file=sys.stderr, flush=True)
