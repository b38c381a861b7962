"""`--quant int4` end to end: loading and its cache, bad input, and exactness of speculative decoding
with an int4 draft (greedy equals plain greedy; sampling keeps the target's distribution)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import one_line_error, run

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.plain import plain_tokens
from llmgen.decoding.sampling import make_generator
from llmgen.decoding.speculative import DraftModelProposer, FixedGamma, speculate, speculative_tokens
from llmgen.errors import ModelError, UsageError
from llmgen.loading import hf, models
from llmgen.loading.engines.torch import CachedLM
from llmgen.loading.quant import cache as qcache
from llmgen.loading.quant import pack
from llmgen.loading.quant.llama import LeanLlama, Shape


def test_a_checkpoint_is_packed_once_then_read_from_the_cache(tmp_path, monkeypatch, char_model: Path) -> None:
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path))
    built = []
    original = qcache._write

    def spy(packed, target, config_json):
        built.append(target)
        original(packed, target, config_json)

    monkeypatch.setattr(qcache, "_write", spy)
    first = models.load(str(char_model), quant="int4")
    second = models.load(str(char_model), quant="int4")
    assert len(built) == 1 and (built[0] / "SHA256SUMS").is_file()
    assert isinstance(first.model, LeanLlama) and first.quant == "int4" and first.vocab_size == 13
    ids = [0, 5, 6, 7]
    a, b = CachedLM(first.model).forward(ids), CachedLM(second.model).forward(ids)
    assert torch.equal(a, b)


def test_a_corrupt_int4_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, capsys, char_model: Path) -> None:
    monkeypatch.setenv("LLMGEN_CACHE_DIR", str(tmp_path))
    models.load(str(char_model), quant="int4")
    target = qcache.dir_cache_path(char_model)
    weights = target / qcache.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    loaded = models.load(str(char_model), quant="int4")
    err = capsys.readouterr().err
    assert "corrupt" in err and "rebuilding" in err
    assert qcache._read(target) is not None  # rebuilt and valid again
    assert loaded.model(input_ids=torch.tensor([[0, 5]])).logits.isfinite().all()


def test_the_int4_model_computes_its_dequantized_weights(char_model: Path) -> None:
    """The int4 kernel against float matmuls over the same (dequantized) blocks: equal but for the
    kernel's bfloat16 rounding. A misplaced block, row or scale moves the logits by their own size."""
    from transformers import AutoConfig

    shape = Shape.from_config(AutoConfig.from_pretrained(char_model))
    packed = pack.from_checkpoint(char_model, shape)
    config = AutoConfig.from_pretrained(char_model)
    ids = torch.tensor([[0, 5, 6, 7, 3, 8]])
    kernel = pack.build(packed, config)(input_ids=ids).logits
    reference = pack.build(packed, config, linear=pack.dequantized_linear)(input_ids=ids).logits
    torch.testing.assert_close(kernel, reference, rtol=0.03, atol=0.03 * float(reference.abs().max()))


def test_checkpoint_weights_are_quantized_within_half_a_step(char_model: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    packed = pack.from_checkpoint(char_model, Shape.from_config(AutoConfig.from_pretrained(char_model)))
    weights = load_file(str(char_model / "model.safetensors"))
    blocks = packed.blocks("layers.1.down")
    original = weights["model.layers.1.mlp.down_proj.weight"]
    step = blocks.scale.repeat_interleave(32, dim=1)  # d of each weight's group
    assert ((blocks.dequantize() - original).abs() <= step / 2 + 1e-3 * original.abs().max()).all()
    head = packed.blocks("head").dequantize()
    assert (head - weights["lm_head.weight"]).abs().max() < 0.01 * weights["lm_head.weight"].abs().max()


def test_unknown_quant_is_a_usage_error(capsys, char_model: Path) -> None:
    code, _, err = run(capsys, "generate", "-m", str(char_model), "--quant", "int3", "--raw", "ab")
    assert code == 2
    assert "--quant must be one of none, int4" in one_line_error(err)
    with pytest.raises(UsageError):
        models.load(str(char_model), quant="fp8")


def test_an_architecture_without_an_int4_path_is_one_line(capsys, tmp_path) -> None:
    from tiny_models import build_char_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=13, n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(tmp_path)
    build_char_tokenizer(tmp_path)
    code, _, err = run(capsys, "generate", "-m", str(tmp_path), "--quant", "int4", "--raw", "ab")
    assert code == 1
    line = one_line_error(err)
    assert "no int4 path" in line and "GPT2LMHeadModel" in line and "--quant none" in line


def test_int4_on_cuda_is_refused(monkeypatch, char_model: Path) -> None:
    monkeypatch.setattr(hf, "pick_device", lambda device: torch.device("cuda"))
    with pytest.raises(ModelError, match="CPU only"):
        models.load(str(char_model), quant="int4", device="cuda")


def test_beam_search_with_int4_runs_on_the_engine_rows(capsys, char_model: Path) -> None:
    code, out, err = run(capsys, "generate", "-m", str(char_model), "--quant", "int4", "--num-beams", "2", "-n", "2",
                         "--raw", "-N", "6", "--json", "ab")
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.strip()]) == 2


GREEDY = DecodingConfig(temperature=0.0, max_new_tokens=40, ignore_eos=True)


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_speculative_greedy_with_an_int4_draft_equals_plain_float_greedy(char_model: Path, gamma: int) -> None:
    target = models.load(str(char_model))
    draft = models.load(str(char_model), quant="int4")  # the target's own weights in 4 bits: `--draft self`
    prompt = [0, 5, 6, 7, 3]
    plain = (t.id for t in plain_tokens(CachedLM(target.model), prompt, GREEDY, make_generator(0)))
    expected = [next(plain) for _ in range(GREEDY.max_new_tokens)]
    result = speculate(target, draft, prompt, GREEDY, gamma=gamma)
    assert result.token_ids == expected
    assert result.stats["draft_tokens"] > 0


def test_the_small_draft_keeps_embedded_greedy_exact(embedded) -> None:
    """The card's command, `speculate --draft small --gamma 5`, against plain greedy on the embedded model."""
    draft = models.load("small")
    assert draft.quant == "int4"
    config = DecodingConfig(temperature=0.0, max_new_tokens=48, ignore_eos=True)
    prompt = embedded.tokenizer("The three primary colors are")["input_ids"]
    plain = (t.id for t in plain_tokens(CachedLM(embedded.model), prompt, config, make_generator(0)))
    expected = [next(plain) for _ in range(config.max_new_tokens)]
    result = speculate(embedded, draft, prompt, config, gamma=5)
    assert result.token_ids == expected
    assert result.stats["accepted_tokens"] / result.stats["draft_tokens"] > 0.5


def test_speculative_sampling_with_an_int4_draft_follows_the_target(char_model: Path, draft_model: Path) -> None:
    """The chi-square test of test_speculative_distribution with the real int4 draft model (its own cache,
    its bfloat16 numerics) in the loop, every sampling option on."""
    from tables import (
        CONFIGS,
        LENGTH,
        SAMPLES,
        TableLM,
        chi_square_p_value,
        exact_joint,
        logits_table,
    )

    config = CONFIGS["temperature-topk-topp-penalties"]
    target = models.load(str(char_model))
    prompt = target.tokenizer("h ab")["input_ids"]
    table = logits_table(char_model, prompt, LENGTH - 1)
    draft = models.load(str(draft_model), quant="int4")
    generator = make_generator(99)
    observed: Counter = Counter()
    proposed = accepted = 0
    for _ in range(SAMPLES):
        rounds = []
        proposer = DraftModelProposer(CachedLM(draft.model), config, draft.context_length)
        tokens = speculative_tokens(TableLM(table), proposer, prompt, config, generator, FixedGamma(2), LENGTH,
                                    on_round=rounds.append)
        observed[tuple(token.id for token in tokens)] += 1
        proposed += sum(len(r.proposed) for r in rounds)
        accepted += sum(r.accepted for r in rounds)
    assert 0.1 < accepted / proposed < 0.9, (accepted, proposed)
    assert chi_square_p_value(observed, exact_joint(table, prompt, config), SAMPLES) > 1e-3


def test_speculate_self_draft_from_the_command_line(capsys, char_model: Path) -> None:
    args = ("--raw", "--greedy", "--ignore-eos", "-N", "20", "--json", "abc ab")
    code, plain, _ = run(capsys, "generate", "-m", str(char_model), *args)
    assert code == 0
    code, out, _ = run(capsys, "speculate", "-m", str(char_model), "--draft", "self", "-g", "4", *args)
    assert code == 0
    assert json.loads(out)["token_ids"] == json.loads(plain)["token_ids"]
