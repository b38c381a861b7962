"""Small helpers around transformers: keep its logging and progress bars quiet, set environment
variables for one call, and shorten its exceptions to one line, the way llmgen reports errors."""

from __future__ import annotations

import contextlib
import functools
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


VERBOSE = "LLMGEN_VERBOSE"  # set (to anything but 0): the libraries' own bars and log lines are shown


@contextlib.contextmanager
def verbose() -> Iterator[None]:
    """`--verbose`: let transformers' and llama.cpp's own progress bars and log lines through."""
    with environment(**{VERBOSE: "1", "LLMGEN_LLAMACPP_LOG": "1"}):
        yield


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' logging, warnings and tqdm bars: our output is ours (unless `verbose()`)."""
    if os.environ.get(VERBOSE, "") not in ("", "0"):
        yield
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with _no_tqdm(), warnings.catch_warnings():  # the GGUF reader uses tqdm directly
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    """Every tqdm bar made in the block is disabled, unless its maker asks for it explicitly.

    NOTE: tqdm reads TQDM_DISABLE once, when it is first imported (`tqdm.utils.envwrap`), and transformers
    imports it before any of our code runs (setting it here also made a tqdm first imported in the block
    silent for good); so the default of `disable` is swapped on the class for the duration instead
    (transformers' "Converting and de-quantizing GGUF tensors..." passes none).
    """
    try:
        from tqdm import std
    except ImportError:  # pragma: no cover - transformers depends on tqdm
        yield
        return
    init = std.tqdm.__init__
    std.tqdm.__init__ = functools.partialmethod(init, disable=True)  # type: ignore[method-assign]
    try:
        yield
    finally:
        std.tqdm.__init__ = init  # type: ignore[method-assign]


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def warn(message: str) -> None:
    print(f"llmgen: warning: {message}", file=sys.stderr, flush=True)
