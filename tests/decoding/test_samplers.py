"""The stages beyond HF's defaults, each against its definition, on peaked logits tables.

- typical-p, epsilon and eta equal HF's warpers;
- top-p with the top-k prefilter keeps exactly what the full sort keeps (ties, flat and peaked rows);
- the token controls follow vLLM's definitions (bad words, min tokens, allowed ids) and OpenAI's
  logit bias; the reasoning budget forces the closing tag;
- `--samplers` orders the chain; the default order leaves the HF chain as it was.
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import EpsilonLogitsWarper, EtaLogitsWarper, TypicalLogitsWarper

from llmgen.decoding.config import DEFAULT_ORDER, LLAMACPP_ORDER, DecodingConfig, coerce, resolve
from llmgen.decoding.processors import (
    Context,
    TokenTables,
    apply_epsilon,
    apply_eta,
    apply_token_controls,
    apply_top_p,
    apply_typical_p,
    process,
    stages,
    top_p_sorted,
)
from llmgen.decoding.processors.controls import banned_by_bad_words, forced_close
from llmgen.decoding.processors.tables import build_tables
from llmgen.errors import ConfigError, UsageError

VOCAB = 50


def peaked(seed: int, rows: int = 3, scale: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=gen) * scale


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9, 0.99])
def test_typical_p_is_hfs_warper(seed: int, mass: float) -> None:
    logits = peaked(seed)
    assert torch.equal(apply_typical_p(logits, mass), TypicalLogitsWarper(mass)(None, logits))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("epsilon", [1e-4, 3e-3, 0.05, 0.3])
def test_epsilon_and_eta_are_hfs_warpers(seed: int, epsilon: float) -> None:
    logits = peaked(seed)
    assert torch.equal(apply_epsilon(logits, epsilon), EpsilonLogitsWarper(epsilon)(None, logits))
    assert torch.equal(apply_eta(logits, epsilon), EtaLogitsWarper(epsilon)(None, logits))


def test_the_warpers_on_masked_rows_keep_the_masked_tokens_out() -> None:
    logits = peaked(0)
    logits[:, :10] = float("-inf")
    for out in (apply_typical_p(logits, 0.9), apply_epsilon(logits, 0.01), apply_eta(logits, 0.01)):
        assert torch.isinf(out[:, :10]).all() and torch.isfinite(out).any(dim=-1).all()


def adversarial_rows(vocab: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randn(vocab, generator=gen) * s for s in (0.5, 2.0, 6.0, 12.0)]
    flat = torch.zeros(vocab)
    ties = torch.randn(vocab, generator=gen).round()  # many ties everywhere
    steps = torch.full((vocab,), -20.0)
    steps[:10] = torch.tensor([5.0, 5.0, 4.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0, 2.0])  # ties at the cut
    one = torch.full((vocab,), -30.0)
    one[7] = 10.0
    masked = torch.randn(vocab, generator=gen) * 3
    masked[: vocab // 2] = float("-inf")
    return torch.stack([*rows, flat, ties, steps, one, masked])


@pytest.mark.parametrize("p", [0.05, 0.5, 0.8, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("vocab", [2000, 49152])
def test_top_p_with_the_prefilter_keeps_what_the_full_sort_keeps(p: float, vocab: int) -> None:
    logits = adversarial_rows(vocab)
    assert torch.equal(apply_top_p(logits, p), top_p_sorted(logits, p))


def test_top_p_on_a_small_vocabulary_is_the_full_sort() -> None:
    logits = peaked(3)
    assert torch.equal(apply_top_p(logits, 0.7), top_p_sorted(logits, 0.7))


# --- token controls (vLLM's definitions) -------------------------------------------------------------

def test_bad_words_ban_the_last_token_where_the_others_end_the_output() -> None:
    words = [(5,), (1, 2, 3), (4, 2)]
    assert banned_by_bad_words([], words) == {5}  # a one-token word is always banned
    assert banned_by_bad_words([9, 1, 2], words) == {5, 3}
    assert banned_by_bad_words([1, 2, 4], words) == {5, 2}
    assert banned_by_bad_words([2], words) == {5}  # too short for the three-token word
    assert banned_by_bad_words([1, 9, 2], words) == {5}


class WordTokenizer:
    """'a', 'b', ' a', ' b', 'ab', ' ab' as single tokens; anything else by characters."""

    pieces = ["a", "b", " a", " b", "ab", " ab", " ", "x", "<think>", "</think>"]

    def __init__(self) -> None:
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}

    def __len__(self) -> int:
        return len(self.pieces)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        out, i = [], 0
        while i < len(text):
            for size in (9, 8, 7, 3, 2, 1):
                if text[i:i + size] in self.ids:
                    out.append(self.ids[text[i:i + size]])
                    i += size
                    break
            else:
                raise KeyError(text[i])
        return {"input_ids": out}

    def batch_decode(self, ids, skip_special_tokens: bool = False) -> list[str]:
        return ["".join(self.pieces[i] for i in row) for row in ids]


def test_bad_word_tables_hold_the_word_with_and_without_a_leading_space() -> None:
    tok = WordTokenizer()
    tables = build_tables(DecodingConfig(bad_words=("ab", "a b")), tok, {9})
    # "ab" -> [ab]; " ab" -> [ ab] (another first token, same length): both kept
    # "a b" -> [a, ' b']; " a b" -> [' a', ' b']: both kept
    assert set(tables.bad_words) == {(4,), (5,), (0, 3), (2, 3)}


def test_vllms_rule_drops_the_spaced_form_when_it_is_not_a_word_of_the_same_length() -> None:
    tok = WordTokenizer()
    tables = build_tables(DecodingConfig(bad_words=("x",)), tok, {9})
    assert tables.bad_words == ((7,),)  # " x" is [' ', x]: two tokens, not another word


def controls(config: DecodingConfig, generated: list[int], tables: TokenTables, logits=None) -> torch.Tensor:
    logits = peaked(1, rows=1)[:, :10] if logits is None else logits
    return apply_token_controls(logits, [Context([0], generated, (), tables)], config)[0]


def test_min_tokens_bans_the_stop_ids_until_n_tokens_are_written() -> None:
    tables = TokenTables(10, frozenset({1, 6}))
    config = DecodingConfig(min_tokens=2)
    assert torch.isinf(controls(config, [], tables)[[1, 6]]).all()
    assert torch.isinf(controls(config, [3], tables)[[1, 6]]).all()
    assert torch.isfinite(controls(config, [3, 4], tables)).all()


def test_allowed_token_ids_and_logit_bias() -> None:
    logits = peaked(2, rows=1)[:, :10]
    config = DecodingConfig(allowed_token_ids=(2, 5, 7), logit_bias=((5, 3.0), (7, -100.0), (8, 50.0)))
    out = controls(config, [], TokenTables(10), logits)
    assert torch.isfinite(out).nonzero().flatten().tolist() == [2, 5, 7]
    assert float(out[5]) == pytest.approx(float(logits[0, 5]) + 3.0)
    assert float(out[7]) == pytest.approx(float(logits[0, 7]) - 100.0)


def test_the_reasoning_budget_forces_the_closing_tag_token_by_token() -> None:
    open_tag, close = (8,), (9, 4)
    assert forced_close([8, 1, 2], 3, open_tag, close) is None
    assert forced_close([8, 1, 2, 3], 3, open_tag, close) == 9
    assert forced_close([8, 1, 2, 3, 9], 3, open_tag, close) == 4
    assert forced_close([8, 1, 2, 3, 9, 4], 3, open_tag, close) is None  # closed
    assert forced_close([1, 2, 3, 4], 0, open_tag, close) is None  # no thinking span
    tables = TokenTables(10, think_open=open_tag, think_close=close)
    out = controls(DecodingConfig(reasoning_budget=1), [8, 5], tables)
    assert torch.isfinite(out).nonzero().flatten().tolist() == [9]


def test_token_controls_run_in_the_mask_stage_before_the_penalties_and_in_greedy_mode() -> None:
    logits = peaked(4, rows=1)
    config = DecodingConfig(temperature=0, logit_bias=((int(logits.argmin()), 100.0),), repetition_penalty=1.5)
    names = [s.name for s in stages(logits, torch.zeros_like(logits), config, contexts=[Context([0], [])])]
    assert names[:3] == ["raw", "mask", "penalties"]
    assert int(process(logits, None, config, contexts=[Context([0], [])]).argmax()) == int(logits.argmin())


# --- settings and the order ----------------------------------------------------------------------------

def test_default_order_runs_the_old_stages_in_the_old_order() -> None:
    old = [s for s in DEFAULT_ORDER if s in ("penalties", "temperature", "top_k", "top_p", "min_p")]
    assert old == ["penalties", "temperature", "top_k", "top_p", "min_p"]
    assert LLAMACPP_ORDER[-2:] == ("temperature", "mirostat")


def test_samplers_order_is_parsed_like_llamacpps() -> None:
    assert coerce("samplers", "top_k;temp;typ_p") == ("top_k", "temperature", "typical_p")
    assert coerce("samplers", "llama.cpp") == LLAMACPP_ORDER
    assert coerce("samplers", ["top-k", "top_p"]) == ("top_k", "top_p")


def test_the_llamacpp_order_puts_temperature_after_truncation() -> None:
    logits = peaked(5, rows=1)
    hf = DecodingConfig(temperature=3.0, top_k=3, min_p=0.3)
    lc = hf.replace(samplers=LLAMACPP_ORDER)
    # llama.cpp: min-p on the untempered logits cuts more than after T = 3
    assert int(torch.isfinite(process(logits, None, lc)).sum()) <= int(torch.isfinite(process(logits, None, hf)).sum())
    assert [s.name for s in stages(logits, None, lc)][-2:] == ["temperature", "mirostat"]


@pytest.mark.parametrize("values,message", [
    ({"samplers": "top_k;nope"}, "unknown stage 'nope'"),
    ({"samplers": "top_k;top_k"}, "'top_k' twice"),
    ({"samplers": "temperature", "top_k": 3}, "leaves out 'top_k'"),
    ({"min_tokens": -1}, "min-tokens"),
    ({"mirostat": 1}, "only Mirostat v2"),
    ({"dry_sequence_breakers": [""]}, "dry-sequence-breaker"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "KEY=VALUE"),
    ({"logit_bias": ["5:2"]}, "ID=BIAS"),
    ({"logit_bias": ["5=200"]}, "[-100, 100]"),
    ({"logit_bias": ["x=2"]}, "ID=BIAS"),
])
def test_bad_settings_are_refused_with_one_line(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(None, None, values)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_token_ids_are_refused_against_the_vocabulary() -> None:
    with pytest.raises(UsageError, match="unknown token id 99"):
        build_tables(DecodingConfig(logit_bias=((99, 1.0),)), WordTokenizer(), {9})


def test_preset_and_row_forms_of_the_new_keys() -> None:
    config = resolve({"logit-bias": {"5": 2, "7": -1.5}, "bad-word": "ab", "samplers": ["top_k", "temperature"],
                      "chat_template_kwargs": {"enable_thinking": False}, "stop_token_id": [3]}, "p", {}).config
    assert config.logit_bias == ((5, 2.0), (7, -1.5))
    assert config.bad_words == ("ab",) and config.stop_token_ids == (3,)
    assert config.samplers == ("top_k", "temperature")
    assert config.template_kwargs() == {"enable_thinking": False}


@pytest.mark.parametrize("order", [DEFAULT_ORDER, LLAMACPP_ORDER])
def test_the_chain_on_the_drawable_tokens_only_equals_the_chain_on_the_whole_vocabulary(order) -> None:
    """After a truncation leaves few tokens, `process` runs the value-only stages on those alone;
    `stages` (for inspect) never does. Both give the same distribution."""
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(3, 4000, generator=gen) * 3
    config = DecodingConfig(top_k=40, typical_p=0.9, top_p=0.9, min_p=0.01, xtc_probability=0.3, mirostat=2,
                            temperature=0.8, dynatemp_range=0.2, samplers=order)
    contexts = [Context([1], [2, 3], (4.0, 6.0))] * 3
    fast = process(logits, None, config, None, contexts)
    slow = stages(logits, None, config, None, contexts)[-1].logits
    assert torch.equal(torch.isfinite(fast), torch.isfinite(slow))
    torch.testing.assert_close(fast.softmax(-1), slow.softmax(-1))


def test_greedy_needs_no_warper_in_the_order() -> None:
    assert resolve(None, None, {"samplers": "penalties", "greedy": True}).config.greedy
    with pytest.raises(ConfigError, match="leaves out 'penalties'"):
        resolve(None, None, {"samplers": "top_k", "greedy": True, "presence_penalty": 0.5})
