"""Each llama.cpp stage equals llama.cpp's own sampler on the same logits.

llama-cpp-python's low-level API runs llama.cpp's samplers (`llama_sampler_init_*`) on a
`llama_token_data_array` built from a numpy array; `llama_sampler_apply` leaves the kept tokens
(and, for the shaping stages, their new logits). The tables are peaked and tie-free, so every kept
set has one answer. DRY runs without a vocabulary (no sequence breakers), which llama.cpp allows.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
import torch

from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.processors import (
    Context,
    TokenTables,
    apply_dry,
    apply_dynamic_temperature,
    apply_mirostat,
    apply_top_n_sigma,
    apply_typical_p,
    mirostat_mu,
    stages,
    xtc_cut,
)

llama_cpp = pytest.importorskip("llama_cpp")

VOCAB = 64


def table(seed: int, scale: float = 3.0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return (gen.standard_normal(VOCAB) * scale).astype(np.float32)


def llama_apply(sampler, logits: np.ndarray, accept: tuple[int, ...] = ()) -> dict[int, float]:
    """Token id -> logit of the tokens llama.cpp keeps, after `accept`ing the context tokens."""
    for token in accept:
        llama_cpp.llama_sampler_accept(sampler, token)
    data = (llama_cpp.llama_token_data * len(logits))(
        *[llama_cpp.llama_token_data(i, float(v), 0.0) for i, v in enumerate(logits)])
    array = llama_cpp.llama_token_data_array(ctypes.cast(data, llama_cpp.llama_token_data_p), len(logits), -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    kept = {array.data[i].id: array.data[i].logit for i in range(array.size) if math.isfinite(array.data[i].logit)}
    llama_cpp.llama_sampler_free(sampler)
    return kept


def ours(logits: torch.Tensor) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(logits.tolist()) if math.isfinite(v)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
def test_top_n_sigma_is_llamacpps(seed: int, n: float) -> None:
    logits = table(seed)
    expected = llama_apply(llama_cpp.llama_sampler_init_top_n_sigma(n), logits)
    assert set(ours(apply_top_n_sigma(torch.tensor(logits)[None], n)[0])) == set(expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mass", [0.3, 0.7, 0.95])
def test_typical_p_is_llamacpps(seed: int, mass: float) -> None:
    logits = table(seed)
    expected = llama_apply(llama_cpp.llama_sampler_init_typical(mass, 1), logits)
    assert set(ours(apply_typical_p(torch.tensor(logits)[None], mass)[0])) == set(expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temperature,spread,exponent", [(1.0, 0.5, 1.0), (0.8, 0.3, 2.0), (1.2, 1.5, 0.5)])
def test_dynamic_temperature_is_llamacpps_temp_ext(seed: int, temperature: float, spread: float,
                                                   exponent: float) -> None:
    logits = table(seed)
    expected = llama_apply(llama_cpp.llama_sampler_init_temp_ext(temperature, spread, exponent), logits)
    got = ours(apply_dynamic_temperature(torch.tensor(logits)[None], temperature, spread, exponent)[0])
    assert set(got) == set(expected)
    for token, logit in expected.items():
        assert got[token] == pytest.approx(logit, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [1.0, 3.0, 5.0])
def test_mirostat_v2_keeps_what_llamacpp_keeps_and_mu_follows_its_update(seed: int, tau: float) -> None:
    """One step from mu = 2 tau; then mu after some surprises, checked through the kept set."""
    config = DecodingConfig(mirostat=2, mirostat_tau=tau, mirostat_eta=0.1)
    logits = table(seed, 2.0)
    expected = llama_apply(llama_cpp.llama_sampler_init_mirostat_v2(seed, tau, 0.1), logits)
    got = ours(apply_mirostat(torch.tensor(logits)[None], [mirostat_mu((), config)])[0])
    assert set(got) == set(expected)
    # mu <- mu - eta (s - tau) per token, as llama.cpp does after its draw
    sampler = llama_cpp.llama_sampler_init_mirostat_v2(seed, tau, 0.1)
    surprises = []
    for step in range(3):
        step_logits = table(100 + seed * 10 + step, 2.0)
        data = (llama_cpp.llama_token_data * VOCAB)(
            *[llama_cpp.llama_token_data(i, float(v), 0.0) for i, v in enumerate(step_logits)])
        array = llama_cpp.llama_token_data_array(ctypes.cast(data, llama_cpp.llama_token_data_p), VOCAB, -1, False)
        mu = mirostat_mu(surprises, config)
        kept = ours(apply_mirostat(torch.tensor(step_logits)[None], [mu])[0])
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        assert {array.data[i].id for i in range(array.size)} == set(kept)
        chosen = array.data[array.selected]
        surprises.append(-math.log2(chosen.p))
    llama_cpp.llama_sampler_free(sampler)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.2])
def test_xtc_cut_is_llamacpps_and_the_chain_is_the_mixture(seed: int, threshold: float) -> None:
    logits = table(seed, 1.5)
    expected = llama_apply(llama_cpp.llama_sampler_init_xtc(1.0, threshold, 1, seed), logits)
    cut = xtc_cut(torch.tensor(logits)[None], threshold)[0]
    assert set(ours(cut)) == set(expected)
    untouched = llama_apply(llama_cpp.llama_sampler_init_xtc(0.0, threshold, 1, seed), logits)
    assert len(untouched) == VOCAB
    # the chain's distribution: (1 - P) * softmax(logits) + P * softmax(cut)
    config = DecodingConfig(xtc_probability=0.3, xtc_threshold=threshold)
    final = stages(torch.tensor(logits)[None], None, config)[-1].logits[0].softmax(-1)
    mixture = 0.7 * torch.tensor(logits).softmax(-1) + 0.3 * cut.softmax(-1)
    torch.testing.assert_close(final, mixture)


def test_xtc_frequency_under_llamacpps_coin_matches_the_probability() -> None:
    """llama.cpp draws the coin: over many seeds, the cut happens about P of the time."""
    logits = table(1, 1.5)
    cuts = sum(len(llama_apply(llama_cpp.llama_sampler_init_xtc(0.4, 0.05, 1, seed), logits)) < VOCAB
               for seed in range(400))
    assert abs(cuts / 400 - 0.4) < 0.1


DRY_CASES = [
    # (context, multiplier, base, allowed length, last n)
    ([1, 2, 3, 4, 1, 2, 3], 0.8, 1.75, 2, -1),
    ([5, 6, 5, 6, 5, 6, 5], 1.0, 1.75, 2, -1),
    ([1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3, 4, 1, 2], 0.5, 2.0, 1, -1),
    ([7, 7, 7, 7, 7, 7, 7, 7], 0.8, 1.75, 3, -1),
    ([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3], 0.8, 1.75, 2, 6),
    ([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 3, 1, 4, 1, 5], 2.0, 1.1, 2, -1),
]


@pytest.mark.parametrize("case", DRY_CASES)
def test_dry_is_llamacpps(case) -> None:
    context, multiplier, base, allowed, last_n = case
    logits = table(len(context))
    # NOTE: without a model llama.cpp's -1 ("the context size") has no size: the context's length is the same
    sampler = llama_cpp.llama_sampler_init_dry(None, multiplier, base, allowed, last_n if last_n > 0 else len(context),
                                               None, 0)
    expected = llama_apply(sampler, logits, tuple(context))
    config = DecodingConfig(dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed,
                            dry_penalty_last_n=last_n)
    got = apply_dry(torch.tensor(logits)[None], [context], config, [{}])[0]
    assert any(got[t] != logits[t] for t in range(VOCAB)), "the case should penalise something"
    for token, logit in expected.items():
        assert float(got[token]) == pytest.approx(logit, rel=1e-5, abs=1e-4), token


def test_dry_through_the_chain_reads_the_context() -> None:
    context = [1, 2, 3, 4, 1, 2, 3]
    logits = torch.tensor(table(3))[None]
    config = DecodingConfig(dry_multiplier=0.8)
    out = stages(logits, None, config, contexts=[Context(context[:2], context[2:], (), TokenTables(VOCAB))])
    dry = next(s for s in out if s.name == "dry")
    assert dry.on and float(dry.logits[0, 4]) < float(logits[0, 4])


def test_dry_with_sequence_breakers_is_llamacpps_on_a_real_vocabulary(embedded_dir) -> None:
    """The breakers processed from text (our tables from the HF tokenizer, llama.cpp's from the GGUF's
    vocabulary) limit the repetition the same way, on a context with a newline and a colon in it."""
    from transformers import AutoTokenizer

    from llmgen.decoding.processors.tables import build_tables
    from llmgen.loading import models

    gguf = str(models.resolve(models.DEFAULT_MODEL).location)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(gguf.encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    text = "one two three four: five six\none two three four: five six\none two three four"
    context = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = len(tokenizer)
    logits = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    penalised = {}
    try:
        for breakers in ((), ("\n",), ("\n", ":")):
            config = DecodingConfig(dry_multiplier=0.8, dry_allowed_length=2, dry_sequence_breakers=breakers or ("x",))
            tables = build_tables(config, tokenizer, set(), size) if breakers else None
            names = (ctypes.c_char_p * max(1, len(breakers)))(*[b.encode() for b in breakers])
            sampler = llama_cpp.llama_sampler_init_dry(vocab, 0.8, 1.75, 2, len(context), names, len(breakers))
            expected = llama_apply(sampler, logits, tuple(context))
            got = apply_dry(torch.tensor(logits)[None], [context], config,
                            [tables.dry_breakers if tables else {}])[0]
            changed = {t for t in range(size) if got[t] != logits[t]}
            assert changed == {t for t, v in expected.items() if v != logits[t]}, breakers
            for token in changed:
                assert float(got[token]) == pytest.approx(expected[token], rel=1e-5, abs=1e-4)
            penalised[breakers] = {t: float(got[t]) for t in changed}
    finally:
        llama_cpp.llama_model_free(model)
    assert penalised[()] != penalised[("\n",)] != penalised[("\n", ":")]  # the breakers matter here
