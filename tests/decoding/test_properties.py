"""Properties that hold for any logits and any valid option values, checked with hypothesis.

- the processor chain never produces NaN, and always leaves at least one token sampleable;
- the distribution sums to 1 and the pick only draws tokens of positive probability;
- top-p keeps the smallest set of most likely tokens whose probability reaches p;
- the verifier returns between 1 and γ+1 tokens, starting with the accepted draft prefix;
- greedy speculative decoding equals plain greedy decoding, for random tiny models, drafts and γ.

Example counts are bounded (the suite runs on 2 shared cores); `deadline=None` because a shared
machine makes single-example timings meaningless. The model-based property is derandomized so that
the suite is reproducible; the cheap tensor properties explore new examples on every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgen.decoding import processors
from llmgen.decoding.config import DecodingConfig
from llmgen.decoding.sampling import make_generator, random_pick
from llmgen.errors import ConfigError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Logits as a model could produce them, with some tokens already masked (-inf) by an earlier filter.
LOGIT = st.one_of(st.floats(-1e4, 1e4, allow_nan=False, width=32), st.just(float("-inf")))


@st.composite
def logits_tables(draw: st.DrawFn, max_vocab: int = 40) -> torch.Tensor:
    rows = draw(st.integers(1, 3))
    vocab = draw(st.integers(2, max_vocab))
    values = draw(st.lists(st.lists(LOGIT, min_size=vocab, max_size=vocab), min_size=rows, max_size=rows))
    table = torch.tensor(values, dtype=torch.float32)  # [rows, vocab]
    for row in range(rows):  # at least one token of every row is not masked
        if not torch.isfinite(table[row]).any():
            table[row, draw(st.integers(0, vocab - 1))] = draw(st.floats(-50, 50))
    return table


@st.composite
def configs(draw: st.DrawFn) -> DecodingConfig:
    """Any valid options; temperature and repetition penalty are kept within 1e-3..1e3 (see the
    xfail test below for what happens far outside)."""
    greedy = draw(st.booleans())
    return DecodingConfig(
        temperature=0.0 if greedy else draw(st.floats(1e-3, 100)),
        top_k=draw(st.integers(0, 50)),
        top_p=draw(st.floats(1e-6, 1.0, exclude_min=False)),
        min_p=draw(st.floats(0.0, 1.0)),
        frequency_penalty=draw(st.floats(-2, 2)),
        presence_penalty=draw(st.floats(-2, 2)),
        repetition_penalty=draw(st.floats(1e-3, 1e3)),
        penalty_scope=draw(st.sampled_from(["generated", "all"])),
        penalty_window=draw(st.integers(0, 20)),
    )


def counts_for(draw: st.DrawFn, rows: int, vocab: int, config: DecodingConfig) -> torch.Tensor:
    prompt = draw(st.lists(st.integers(0, vocab - 1), max_size=30))
    generated = draw(st.lists(st.integers(0, vocab - 1), max_size=30))
    context = processors.penalty_context(prompt, generated, config)
    return processors.token_counts(context, vocab)[None].expand(rows, vocab)


@FAST
@given(data=st.data())
def test_the_chain_never_produces_nan_and_leaves_a_token_to_sample(data: st.DataObject) -> None:
    logits = data.draw(logits_tables())
    config = data.draw(configs())
    counts = counts_for(data.draw, *logits.shape, config)
    before = logits.clone()
    processed = processors.process(logits, counts, config)  # [rows, vocab]
    assert torch.equal(logits, before)  # the input is not mutated
    assert not processed.isnan().any()
    assert torch.isfinite(processed).any(dim=-1).all()  # at least one sampleable token per row
    probs = processors.distribution(logits, counts, config)  # [rows, vocab]
    assert not probs.isnan().any() and (probs >= 0).all()
    assert torch.allclose(probs.sum(dim=-1), torch.ones(probs.shape[0]), atol=1e-5)
    token = random_pick(probs, make_generator(data.draw(st.integers(0, 2**32))))  # [rows]
    assert (probs.gather(-1, token[:, None]) > 0).all()


@FAST
@given(logits=logits_tables(max_vocab=60), p=st.floats(1e-6, 0.999999),
       temperature=st.floats(0.05, 20))
def test_top_p_keeps_the_smallest_set_of_most_likely_tokens_reaching_p(logits: torch.Tensor, p: float,
                                                                       temperature: float) -> None:
    scaled = processors.apply_temperature(logits, temperature)
    probs = scaled.softmax(dim=-1).double()  # [rows, vocab]
    kept = torch.isfinite(processors.apply_top_p(scaled, p))  # [rows, vocab]
    tolerance = 1e-5  # the chain sums in float32
    for row in range(logits.shape[0]):
        inside, outside = probs[row][kept[row]], probs[row][~kept[row]]
        assert inside.numel() >= 1
        mass = float(inside.sum())
        assert mass >= p - tolerance  # reaches p
        assert mass - float(inside.min()) < p + tolerance  # without its least likely token it would not
        if outside.numel():  # and it is made of the most likely tokens
            assert float(inside.min()) >= float(outside.max()) - 1e-12


def test_a_tiny_temperature_is_greedy_and_gives_no_nan() -> None:
    """logits / 1e-40 would overflow to inf and the softmax to NaN: below 1e-5 the config is greedy."""
    logits = torch.tensor([[100.0, 50.0, -3.0]])
    probs = processors.distribution(logits, torch.ones(1, 3), DecodingConfig(temperature=1e-40))
    assert probs.tolist() == [[1.0, 0.0, 0.0]]


def test_a_repetition_penalty_that_would_overflow_is_refused() -> None:
    with pytest.raises(ConfigError, match="repetition-penalty"):
        DecodingConfig(repetition_penalty=1e-40, temperature=0.5)


# --- the verifier ------------------------------------------------------------------------------

@st.composite
def distributions(draw: st.DrawFn, rows: int, vocab: int) -> torch.Tensor:
    """Rows of probabilities with some exact zeros (filtered tokens), each row summing to 1."""
    weights = torch.tensor(draw(st.lists(st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)),
                                                  min_size=vocab, max_size=vocab),
                                         min_size=rows, max_size=rows)), dtype=torch.float32).reshape(rows, vocab)
    for row in range(rows):
        if weights[row].sum() == 0:
            weights[row, draw(st.integers(0, vocab - 1))] = 1.0
    return weights / weights.sum(dim=-1, keepdim=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_verifier_returns_between_1_and_gamma_plus_1_tokens(data: st.DataObject) -> None:
    from llmgen.decoding.speculative.verify import verify

    gamma = data.draw(st.integers(0, 8), label="gamma")
    vocab = data.draw(st.integers(2, 12), label="vocab")
    p = data.draw(distributions(gamma + 1, vocab), label="p")  # [γ+1, vocab]
    one_hot_draft = data.draw(st.booleans(), label="n-gram draft (q = None)")
    q = None if one_hot_draft else data.draw(distributions(gamma, vocab), label="q")  # [γ, vocab]
    if q is not None and data.draw(st.booleans(), label="draft sampled from q"):
        draft = [int(torch.multinomial(q[i], 1)) for i in range(gamma)]
    else:
        draft = data.draw(st.lists(st.integers(0, vocab - 1), min_size=gamma, max_size=gamma), label="draft")
    verdict = verify(draft, q, p, make_generator(data.draw(st.integers(0, 2**32), label="seed")))
    assert 1 <= len(verdict.tokens) <= gamma + 1
    assert 0 <= verdict.accepted <= gamma and len(verdict.tokens) == verdict.accepted + 1
    assert verdict.tokens[:verdict.accepted] == draft[:verdict.accepted]
    for i in range(verdict.accepted):  # an accepted token is one the target could have sampled
        assert p[i, draft[i]] > 0
    last = verdict.tokens[-1]
    assert 0 <= last < vocab
    assert p[verdict.accepted, last] > 0  # the resampled or bonus token has positive target probability


# --- greedy speculative == greedy --------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(char_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(char_model)


def random_model(tokenizer, seed: int, layers: int, hidden: int):
    """A random llama over the 13-token char vocabulary, in memory, wrapped as a LoadedModel."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmgen.loading.models import LoadedModel

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=False,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(ref=f"random-{seed}", model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                       dtype=torch.float32, context_length=128, eos_token_ids=frozenset({1}), load_seconds=0.0,
                       path=Path("."))


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_greedy_speculative_equals_greedy_for_random_tiny_models(tokenizer, data: st.DataObject) -> None:
    from llmgen.decoding.plain import plain_tokens
    from llmgen.decoding.sequence import run_sequence
    from llmgen.decoding.speculative import speculate
    from llmgen.loading.engines.torch import CachedLM

    target = random_model(tokenizer, data.draw(st.integers(0, 10**6), label="target seed"),
                          data.draw(st.integers(1, 2), label="layers"), 32)
    draft = None  # the n-gram draft
    if data.draw(st.booleans(), label="model draft"):
        draft = random_model(tokenizer, data.draw(st.integers(0, 10**6), label="draft seed"), 1, 16)
    gamma = data.draw(st.one_of(st.integers(1, 8), st.just("auto")), label="gamma")
    prompt = data.draw(st.lists(st.integers(3, 12), min_size=1, max_size=12), label="prompt")
    config = DecodingConfig(temperature=0, max_new_tokens=data.draw(st.integers(1, 24), label="max new tokens"),
                            ignore_eos=data.draw(st.booleans(), label="ignore eos"),
                            frequency_penalty=data.draw(st.sampled_from([0.0, 0.5]), label="frequency"),
                            repetition_penalty=data.draw(st.sampled_from([1.0, 1.3]), label="repetition"))
    plain_source = plain_tokens(CachedLM(target.model), prompt, config,
                                                                  make_generator(0))
    plain = run_sequence(plain_source, tokenizer, prompt, config, target.eos_token_ids, target.context_length)
    result = speculate(target, draft, prompt, config, gamma=gamma, ngram_min=1, generator=make_generator(0))
    assert result.token_ids == plain.token_ids
    assert result.finish_reason == plain.finish_reason
