"""`hfutil.quiet()`: no third-party progress bar or log line reaches stderr while a model loads, unless
`--verbose` (`hfutil.verbose()`) asks for them."""

from __future__ import annotations

import pytest

tqdm_auto = pytest.importorskip("tqdm.auto")
pytest.importorskip("transformers")

from llmgen.loading.hfutil import quiet, verbose  # noqa: E402

DESC = "Converting and de-quantizing GGUF tensors..."  # transformers' bar, made with tqdm directly


def bar() -> None:
    for _ in tqdm_auto.tqdm(range(3), desc=DESC):
        pass


def test_a_bar_made_with_tqdm_directly_is_silenced_although_tqdm_was_imported_first(capfd) -> None:
    """TQDM_DISABLE is read when tqdm is imported, which is before any of llmgen's code runs."""
    with quiet():
        bar()
    assert DESC not in capfd.readouterr().err


def test_verbose_lets_it_through_and_quiet_is_restored_after(capfd) -> None:
    with verbose(), quiet():
        bar()
    assert DESC in capfd.readouterr().err
    with quiet():
        bar()
    assert DESC not in capfd.readouterr().err


def test_a_bar_outside_quiet_is_left_alone(capfd) -> None:
    with quiet():
        pass
    bar()
    assert DESC in capfd.readouterr().err
