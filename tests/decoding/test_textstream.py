"""Streaming text: characters split across tokens and stop strings spanning tokens."""

from __future__ import annotations

import pytest

from llmgen.decoding.textstream import TextStream


class ByteTokenizer:
    """Each token is one byte of UTF-8; decoding replaces an incomplete character with U+FFFD."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def stream_all(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(ByteTokenizer(), stop)
    pieces = []
    for byte in text.encode("utf-8"):
        pieces.append(stream.push(byte))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    return pieces, stream


def test_multibyte_characters_are_never_printed_broken() -> None:
    pieces, stream = stream_all("naïve 日本 🙂!")
    assert "".join(pieces) == "naïve 日本 🙂!"
    assert all("\ufffd" not in p for p in pieces)
    assert stream.text == "naïve 日本 🙂!"


def test_stop_string_spanning_tokens_is_cut_and_never_printed() -> None:
    pieces, stream = stream_all("Day 1: Lisbon\nDay 2: Porto", stop=("Day 2",))
    assert "".join(pieces) == "Day 1: Lisbon\n"
    assert stream.stopped and stream.text == "Day 1: Lisbon\n"


def test_text_that_may_become_a_stop_string_is_held_back() -> None:
    stream = TextStream(ByteTokenizer(), ("END",))
    out = "".join(stream.push(b) for b in b"abcEN")
    assert out == "abc"  # "EN" may still become "END"
    assert stream.push(ord("x")) == "ENx"
    assert not stream.stopped


def test_held_back_text_is_released_at_the_end() -> None:
    pieces, stream = stream_all("the end is EN", stop=("END",))
    assert "".join(pieces) == "the end is EN"
    assert not stream.stopped


@pytest.mark.parametrize("stops", [("cd", "bcd"), ("bcd", "cd")])
def test_earliest_stop_string_wins(stops: tuple[str, ...]) -> None:
    pieces, stream = stream_all("abcdef", stop=stops)
    assert "".join(pieces) == "a"
