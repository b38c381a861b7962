"""`llmgen/decoding/chat.py`: a chat turn, with the cache kept from earlier turns, gives what a fresh run over the
whole conversation gives (`generate --greedy` on the same messages through the same template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmgen.decoding.chat import (
    ChatSession,
    Conversation,
    ReusedCache,
    Speculative,
    common_prefix,
    reference_reply,
    render,
)
from llmgen.decoding.config import DecodingConfig
from llmgen.errors import PromptError, UsageError
from llmgen.loading import models
from llmgen.loading.engines.torch import CachedLM

GREEDY = DecodingConfig(temperature=0.0, max_new_tokens=12)
USER_TURNS = ["abc", "bad cab", "hea.", "gag"]


def assert_same_or_near_tie(loaded, messages, got: list[int], want: list[int]) -> None:
    """Token for token; where they part, the reference's top-2 gap must be a near-tie (< 1e-3)."""
    if got == want:
        return
    at = common_prefix(got, want)
    ids = render(loaded.tokenizer, messages) + want[:at]
    logits = CachedLM(loaded.model).forward(ids)[0]
    top = torch.topk(logits, 2).values
    assert float(top[0] - top[1]) < 1e-3, (at, got, want)


def converse(loaded, session: ChatSession, turns: list[str], config: DecodingConfig) -> list[dict]:
    """Each turn's reply against the reference on the whole conversation so far; returns the stats."""
    stats = []
    for text in turns:
        session.conversation.messages.append({"role": "user", "content": text})
        messages = session.conversation.full()
        result = session.reply(config)
        want = reference_reply(loaded, messages, config)
        assert_same_or_near_tie(loaded, messages, result.token_ids, want.token_ids)
        session.conversation.messages.append({"role": "assistant", "content": result.text})
        stats.append(result.stats)
    return stats


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_greedy_turns_equal_a_fresh_run_over_the_whole_conversation(char_model: Path) -> None:
    loaded = models.load(str(char_model))
    session = ChatSession(loaded, Conversation(system="ab"))
    stats = converse(loaded, session, USER_TURNS, GREEDY)
    assert [s["cached_tokens"] for s in stats][0] == 0
    assert all(s["cached_tokens"] > 0 for s in stats[1:])  # the system message and earlier turns at least
    assert all(s["prompt_tokens"] > s["cached_tokens"] for s in stats)
    assert all("prefill_seconds" in s for s in stats)


def test_greedy_turns_with_a_real_template(wide_model: Path) -> None:
    """SmolLM2's template over 4 turns: the cache keeps everything before the new message."""
    loaded = models.load(str(wide_model))
    session = ChatSession(loaded, Conversation(system="Be brief."))
    stats = converse(loaded, session, ["Hi", "What did I just say?", "Thanks.", "Bye"],
                     DecodingConfig(temperature=0.0, max_new_tokens=8))
    for before, now in zip(stats, stats[1:]):
        assert now["cached_tokens"] >= before["prompt_tokens"]  # the whole previous prompt was kept


def test_embedded_model_one_short_turn(embedded) -> None:
    session = ChatSession(embedded)
    converse(embedded, session, ["Name a colour.", "Another one."], DecodingConfig(temperature=0.0, max_new_tokens=6))


def test_reused_cache_gives_the_logits_of_a_fresh_prefill(wide_model: Path) -> None:
    loaded = models.load(str(wide_model))
    first = render(loaded.tokenizer, [{"role": "user", "content": "One two three"}])
    second = render(loaded.tokenizer, [{"role": "user", "content": "One two three"},
                                       {"role": "assistant", "content": "four"},
                                       {"role": "user", "content": "five?"}])
    cache = ReusedCache(loaded.engine)
    cache.lm.forward(first + [42, 43])  # a reply the next template renders differently
    cache.tokens = first + [42, 43]
    kept = cache.reuse(second)
    assert kept == common_prefix(first + [42, 43], second) and kept > 0
    reused = cache.lm.forward(second[kept:])[-1]
    fresh = CachedLM(loaded.model).forward(second)[-1]
    torch.testing.assert_close(reused, fresh, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("draft", ["model", "ngram"])
def test_speculative_chat_equals_plain_chat(char_model: Path, draft_model: Path, draft: str) -> None:
    loaded = models.load(str(char_model))
    draft_loaded = models.load(str(draft_model)) if draft == "model" else None
    session = ChatSession(loaded, Conversation(), Speculative(draft_loaded, gamma=3))
    stats = converse(loaded, session, USER_TURNS[:3], GREEDY)
    assert all("acceptance_rate" in s for s in stats)
    assert stats[-1]["cached_tokens"] > 0


def test_a_seeded_reply_is_reproducible_and_turn_one_is_generate(char_model: Path) -> None:
    loaded = models.load(str(char_model))
    config = DecodingConfig(seed=7, max_new_tokens=10, ignore_eos=True)
    session = ChatSession(loaded)
    session.conversation.messages.append({"role": "user", "content": "abc"})
    first = session.reply(config)
    again = session.reply(config)  # a retry: same messages, same seed offset, the cache now warm
    assert first.token_ids == again.token_ids
    assert first.token_ids == reference_reply(loaded, session.conversation.full(), config).token_ids
    assert session.reply(config, seed_offset=1).token_ids != first.token_ids


@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import VOCAB, build_char_tokenizer, build_llama

    path = tmp_path_factory.mktemp("char-short")
    build_char_tokenizer(path)
    build_llama(path, VOCAB, seed=1, context=48)
    return path


def test_the_oldest_turns_are_dropped_never_the_system_message(short_model: Path) -> None:
    loaded = models.load(str(short_model))
    session = ChatSession(loaded, Conversation(system="hh"))
    config = DecodingConfig(temperature=0.0, max_new_tokens=10, ignore_eos=True)
    drops: list[int] = []
    for text in ["abcabc", "dedede", "fafafa", "gbgbgb"]:
        session.conversation.messages.append({"role": "user", "content": text})
        result = session.reply(config, on_drop=drops.append)
        session.conversation.messages.append({"role": "assistant", "content": result.text})
        assert result.stats["prompt_tokens"] + 10 <= 48
    assert drops and session.conversation.system == "hh"
    assert session.conversation.messages[-2]["content"] == "gbgbgb"
    session.conversation.messages.append({"role": "user", "content": "a" * 60})
    before = list(session.conversation.messages)
    with pytest.raises(PromptError, match="context is 48"):
        session.reply(config)
    assert session.conversation.messages == before  # a refused message drops nothing


def test_transcript_round_trip_and_bad_files(tmp_path: Path) -> None:
    conversation = Conversation("be kind", [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}])
    conversation.save(tmp_path / "t.json")
    assert Conversation.load(tmp_path / "t.json") == conversation
    (tmp_path / "bad.json").write_text('[{"role": "robot", "content": "x"}]')
    with pytest.raises(UsageError, match="message 0"):
        Conversation.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(UsageError, match="not valid JSON"):
        Conversation.load(tmp_path / "broken.json")
    with pytest.raises(UsageError, match="cannot read"):
        Conversation.load(tmp_path / "missing.json")


def test_send_retry_and_an_interrupted_reply_keep_the_conversation_whole(short_model: Path) -> None:
    """The turn bookkeeping lives in the session: a turn adds a message and its reply; a refused turn adds
    nothing; a retry replaces the last reply (the same seed stream); Ctrl-C keeps the partial reply."""
    loaded = models.load(str(short_model))
    session = ChatSession(loaded, Conversation(system="hh"))
    config = DecodingConfig(seed=4, max_new_tokens=6, ignore_eos=True)
    first = session.send("abc", config)
    assert [m["role"] for m in session.conversation.messages] == ["user", "assistant"]
    assert session.conversation.messages[-1]["content"] == first.text and session.turns == 1
    again = session.retry(config)
    assert again.token_ids == first.token_ids  # reply 0 draws from seed + 0 both times
    assert session.turns == 1 and session.conversation.messages[-1]["content"] == again.text
    before = list(session.conversation.messages)
    with pytest.raises(PromptError):
        session.send("a" * 60, config)
    assert session.conversation.messages == before

    pieces: list[str] = []

    def stop_after_first_piece(piece: str, origin: str, logprob=None) -> None:
        pieces.append(piece)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        session.send("dede", config.replace(max_new_tokens=20), stop_after_first_piece)
    assert session.conversation.messages[-2] == {"role": "user", "content": "dede"}
    assert session.conversation.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    with pytest.raises(UsageError, match="no reply"):
        ChatSession(loaded).retry(config)
