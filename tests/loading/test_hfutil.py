"""`hfutil.quiet()`: no third-party progress bar or log line reaches stderr while a model loads, unless
`--verbose` (`hfutil.verbose()`) asks for them."""

from __future__ import annotations

import pytest

tqdm_auto = pytest.importorskip("tqdm.auto")
pytest.importorskip("transformers")

from llmgen.loading.hfutil import quiet, verbose  # noqa: E402

DESC = "Converting and de-quantizing GGUF tensors..."  # transformers' bar, made with tqdm directly


def disabled() -> bool:
    """Whether a bar made now, as transformers makes its GGUF bar (no `disable`), is disabled."""
    bar = tqdm_auto.tqdm(range(3), desc=DESC)
    bar.close()
    return bool(bar.disable)


def test_a_bar_made_with_tqdm_directly_is_silenced_although_tqdm_was_imported_first(capfd) -> None:
    """TQDM_DISABLE is read when tqdm is imported, which is before any of llmgen's code runs."""
    with quiet():
        assert disabled()
        for _ in tqdm_auto.tqdm(range(3), desc=DESC):
            pass
    assert DESC not in capfd.readouterr().err


def test_verbose_leaves_bars_as_they_are_and_quiet_restores_them_after() -> None:
    """Bars are left as tqdm would have them (another test's or the environment's setting included)."""
    before = disabled()
    with verbose(), quiet():
        assert disabled() == before
    with quiet():
        assert disabled()
    assert disabled() == before
