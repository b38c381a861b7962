"""The verify-cost curve: given, measured once and cached per key; a damaged cache file is measured again.

No test asserts a timing: the measurement is replaced by a counter wherever its result matters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmgen.errors import UsageError
from llmgen.loading import models, verify_cost
from llmgen.loading.verify_cost import VerifyCost, parse_curve


@pytest.fixture(scope="module")
def target(char_model: Path) -> models.LoadedModel:
    return models.load(str(char_model))


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """A fresh cache dir, no override, no memo; `measure` counts its calls and returns a fixed curve."""
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(verify_cost.ENV, raising=False)
    monkeypatch.setattr(verify_cost, "_memo", {})
    calls: list[int] = []

    def fake(engine, vocab: int, context_length: int) -> tuple[dict[int, float], float]:
        calls.append(vocab)
        return {1: 1.0, 2: 1.5, 4: 2.5}, 0.01

    monkeypatch.setattr(verify_cost, "measure", fake)
    return calls


def test_parse_curve() -> None:
    assert parse_curve("2:2.6, 1:2, 4:4") == {1: 1.0, 2: 1.3, 4: 2.0}  # sorted, relative to k = 1
    for bad in ("2:1.3", "1:1,x:2", "1:1,2:0", "1:1,0:1", "1:1,2"):
        with pytest.raises(UsageError, match="LLMGEN_VERIFY_COST"):
            parse_curve(bad)


def test_the_environment_gives_the_curve_and_nothing_is_measured(target, measured, monkeypatch) -> None:
    monkeypatch.setenv(verify_cost.ENV, "1:1,2:1.2,8:2")
    assert verify_cost.verify_cost(target) == VerifyCost({1: 1.0, 2: 1.2, 8: 2.0}, None, "given")
    assert measured == []


def test_measured_once_then_read_from_the_cache(target, measured, monkeypatch) -> None:
    first = verify_cost.verify_cost(target)
    assert first.source == "measured" and first.curve == {1: 1.0, 2: 1.5, 4: 2.5} and len(measured) == 1
    assert verify_cost.verify_cost(target).source == "measured"  # this process: the memo
    monkeypatch.setattr(verify_cost, "_memo", {})  # a new process: the file
    again = verify_cost.verify_cost(target)
    assert again == VerifyCost(first.curve, first.step_seconds, "cached")
    assert len(measured) == 1
    files = list((Path(verify_cost.cache_dir()) / "verify-cost").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"] == verify_cost.cache_key(target)


def test_the_key_names_engine_model_threads_and_cpu(target, measured, monkeypatch) -> None:
    import torch

    key = verify_cost.cache_key(target)
    assert key["engine"] == "torch" and key["cpu"] == verify_cost.cpu_name()
    assert key["model"].startswith(str(Path(target.path).resolve()))
    threads = torch.get_num_threads()
    verify_cost.verify_cost(target)
    try:
        torch.set_num_threads(threads + 1)
        other = verify_cost.cache_key(target)
        assert other["threads"] == str(threads + 1) and verify_cost.cache_path(other) != verify_cost.cache_path(key)
        assert verify_cost.verify_cost(target).source == "measured"  # another thread count: measured again
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 2


@pytest.mark.parametrize("damage", ["not json", '{"key": {}, "curve": {"1": 1.0}, "step_seconds": 0.01}',
                                    "other key", '{"curve": {"1": 2.0}}', "bad curve"])
def test_a_damaged_file_is_ignored_and_measured_again(target, measured, monkeypatch, capsys, damage: str) -> None:
    key = verify_cost.cache_key(target)
    path = verify_cost.cache_path(key)
    path.parent.mkdir(parents=True)
    good = {"key": key, "curve": {"1": 1.0, "2": 1.4}, "step_seconds": 0.02}
    text = {"other key": json.dumps({**good, "key": {**key, "threads": "99"}}),
            "bad curve": json.dumps({**good, "curve": {"1": 1.0, "2": -1}})}.get(damage, damage)
    path.write_text(text)
    cost = verify_cost.verify_cost(target)
    assert cost.source == "measured" and len(measured) == 1
    assert "ignoring the verify-cost cache" in capsys.readouterr().err
    assert json.loads(path.read_text())["curve"] == {"1": 1.0, "2": 1.5, "4": 2.5}  # rewritten
    path.write_text(json.dumps(good))  # and a good file is read as it is
    monkeypatch.setattr(verify_cost, "_memo", {})
    assert verify_cost.verify_cost(target) == VerifyCost({1: 1.0, 2: 1.4}, 0.02, "cached")


def test_an_unwritable_cache_keeps_the_measurement_in_the_process(target, measured, monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(blocker))  # a file where the cache dir should be
    assert verify_cost.verify_cost(target).source == "measured"
    assert verify_cost.verify_cost(target).source == "measured" and len(measured) == 1


def test_measure_on_a_tiny_model(target) -> None:
    # The real measurement, on the tiny model: its shape only (its values are timings).
    curve, step = verify_cost.measure(target.engine, target.vocab_size, target.context_length, sizes=(1, 2, 4),
                                      budget=0.0)
    assert sorted(curve) == [1, 2, 4] and curve[1] == 1.0
    assert all(v > 0 for v in curve.values()) and step > 0
