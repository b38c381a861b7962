"""Resolving model references, the user registry, refusing unsafe weights, and the GGUF cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llmgen.errors import ModelError
from llmgen.loading import models


def test_default_alias_is_the_embedded_gguf() -> None:
    resolved = models.resolve(models.DEFAULT_MODEL)
    assert resolved.kind == "gguf" and resolved.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    small = models.resolve("small")
    assert small.location == resolved.location and small.quant == "int4" and small.dtype is None


def test_user_registry_adds_aliases(tmp_path, monkeypatch, char_model) -> None:
    monkeypatch.setenv("LLMGEN_CONFIG_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_text(f'[models.tiny]\nsource = "{char_model}"\ndescription = "test"\n')
    assert models.resolve("tiny").location == str(char_model)
    loaded = models.load("tiny")
    assert loaded.ref == "tiny" and loaded.vocab_size == 13 and loaded.context_length == 256


def test_a_user_alias_can_default_to_int4(tmp_path, monkeypatch, char_model) -> None:
    monkeypatch.setenv("LLMGEN_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.toml").write_text(f'[models.tiny4]\nsource = "{char_model}"\nquant = "int4"\n')
    assert models.load("tiny4").quant == "int4"
    assert models.load("tiny4", quant="none").quant == "none"
    (tmp_path / "config" / "models.toml").write_text(f'[models.tiny4]\nsource = "{char_model}"\nquant = "int2"\n')
    with pytest.raises(ModelError, match="quant must be one of none, int4"):
        models.resolve("tiny4")


def test_bad_user_registry_is_a_model_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMGEN_CONFIG_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_text("[models.tiny]\nsourc = 1\n")
    with pytest.raises(ModelError, match="models.tiny"):
        models.resolve("tiny")


def test_hub_ids_resolve_to_the_hub_and_offline_misses_are_clear() -> None:
    assert models.resolve("someone/some-model").kind == "hub"
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        models.load("someone/some-model-that-is-not-cached", offline=True)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_pickle_weights_are_refused_unless_allowed(tmp_path, char_model) -> None:
    from transformers import AutoModelForCausalLM

    path = copy_model(char_model, tmp_path / "pickled")
    model = AutoModelForCausalLM.from_pretrained(path)
    for f in path.glob("*.safetensors"):
        f.unlink()
    import torch

    torch.save(model.state_dict(), path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="--allow-pickle"):
        models.load(str(path))
    assert models.load(str(path), allow_pickle=True).vocab_size == 13


def test_remote_code_is_refused_unless_trusted(tmp_path, char_model) -> None:
    path = copy_model(char_model, tmp_path / "remote")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="--trust-remote-code"):
        models.load(str(path))


def write_minimal_gguf(path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class FakeGGUFLoader:
    """Stands in for transformers' GGUF reader: returns the tiny char model, counting calls."""

    def __init__(self, source: Path, fail_on_save: bool = False) -> None:
        self.source, self.fail_on_save, self.calls = source, fail_on_save, 0

    def model(self, *args, **kwargs):
        from transformers import AutoModelForCausalLM

        self.calls += 1
        model = AutoModelForCausalLM.from_pretrained(self.source)
        if self.fail_on_save:
            def broken_save(directory, *a, **k):
                (Path(directory) / "model.safetensors").write_bytes(b"half")
                raise KeyboardInterrupt  # killed mid-conversion
            model.save_pretrained = broken_save
        return model

    def tokenizer(self, *args, **kwargs):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source)


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch, char_model):
    import transformers

    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    write_minimal_gguf(gguf)  # a valid header, so that the header check passes; the loader is faked
    loader = FakeGGUFLoader(char_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(
        lambda cls, *a, **k: loader.model() if "gguf_file" in k else FakeGGUFLoader.real_model(*a, **k)))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(
        lambda cls, *a, **k: loader.tokenizer() if "gguf_file" in k else FakeGGUFLoader.real_tokenizer(*a, **k)))
    return gguf, loader


def _real(cls_name: str):
    import transformers

    return getattr(transformers, cls_name).from_pretrained


FakeGGUFLoader.real_model = staticmethod(_real("AutoModelForCausalLM"))
FakeGGUFLoader.real_tokenizer = staticmethod(_real("AutoTokenizer"))


def test_gguf_is_converted_once_then_loaded_from_the_cache(fake_gguf) -> None:
    gguf, loader = fake_gguf
    first = models.load(str(gguf))
    second = models.load(str(gguf))
    assert loader.calls == 1
    assert first.path == second.path == models.gguf_cache_path(gguf)
    assert (first.path / "model.safetensors").is_file()
    assert models.is_cached(models.resolve(str(gguf)))


def test_an_interrupted_conversion_leaves_no_cache_behind(fake_gguf) -> None:
    gguf, loader = fake_gguf
    loader.fail_on_save = True
    with pytest.raises(KeyboardInterrupt):
        models.load(str(gguf))
    target = models.gguf_cache_path(gguf)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary directory is gone too
    loader.fail_on_save = False
    assert models.load(str(gguf)).vocab_size == 13


@pytest.fixture
def tied_model(tmp_path: Path) -> Path:
    from tiny_models import VOCAB, build_char_tokenizer, build_llama

    path = tmp_path / "tied"
    build_char_tokenizer(path)
    build_llama(path, VOCAB, seed=4, tied=True)
    return path


def _load_with(monkeypatch, damage):
    """models.load, with transformers' loader replaced by one that damages what it returns:
    damage(model, call number, environment at that call)."""
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained
    calls: list[str | None] = []

    def loader(*args, **kwargs):
        model = real(*args, **kwargs)
        calls.append(os.environ.get("HF_DEACTIVATE_ASYNC_LOAD"))
        damage(model, len(calls))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", loader)
    return calls


def _to_meta(module) -> None:
    import torch

    module.weight = torch.nn.Parameter(torch.empty(module.weight.shape, device="meta"))


def test_an_output_embedding_left_on_meta_is_tied_again(monkeypatch, tied_model: Path) -> None:
    calls = _load_with(monkeypatch, lambda model, n: _to_meta(model.lm_head))
    loaded = models.load(str(tied_model))
    assert calls == [None]  # tying was enough, no second load
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_weights_left_on_meta_are_loaded_again_without_loader_threads(monkeypatch, char_model: Path) -> None:
    monkeypatch.delenv("HF_DEACTIVATE_ASYNC_LOAD", raising=False)
    calls = _load_with(monkeypatch, lambda model, n: _to_meta(model.model.norm) if n == 1 else None)
    loaded = models.load(str(char_model))
    assert calls == [None, "1"]
    assert "HF_DEACTIVATE_ASYNC_LOAD" not in os.environ
    assert not any(p.is_meta for p in loaded.model.parameters())


def test_weights_still_missing_after_the_second_load_are_an_error(monkeypatch, char_model: Path) -> None:
    calls = _load_with(monkeypatch, lambda model, n: _to_meta(model.model.norm))
    with pytest.raises(ModelError, match=r"no weights for model\.norm\.weight"):
        models.load(str(char_model))
    assert len(calls) == 2
