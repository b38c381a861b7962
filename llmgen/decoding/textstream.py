"""Incremental detokenization with stop strings.

Text is released only when it is final:
- a multi-byte character split across tokens is held until its last byte arrives (the decoder
  shows U+FFFD for an incomplete one);
- text that may still grow into a stop string (a suffix of the text that is a prefix of some stop
  string) is held back until it cannot.

Stop strings count from `stop_from` (a character index) on, and only once `armed`: with --min-tokens,
the sequence arms the stream when its N-th token arrives (`sequence.SequenceState`).
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.text = ""  # every character decoded so far
        self.released = 0  # how much of `text` has been handed out
        self.stopped = False
        self.armed = True
        self.stop_from = 0
        self._prefix_offset = 0
        self._read_offset = 0

    def copy(self) -> TextStream:
        """An independent stream in the same state (a beam's child continues its parent's text)."""
        twin = TextStream.__new__(TextStream)
        twin.__dict__.update(self.__dict__)
        twin.ids = list(self.ids)
        return twin

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def arm(self) -> None:
        """From now on, stop strings in text decoded from here on end the stream."""
        self.armed, self.stop_from = True, len(self.text)

    def push(self, token: int) -> str:
        """Add one token; return the text that became final. Sets `stopped` when a stop string appears."""
        self.ids.append(token)
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix):]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: release everything held back (an incomplete character stays as decoded)."""
        if not self.stopped and self._read_offset < len(self.ids):
            prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
            full = self._decode(self.ids[self._prefix_offset:])
            self.text += full[len(prefix):]
            self._read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        stop = self.stop if self.armed else ()
        longest = max((len(s) for s in stop), default=0)
        start = max(self.stop_from, self.released - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in stop) if i >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[:min(hits)]
            end = len(self.text)
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - (self._held_back() if self.armed else 0)
        out = self.text[self.released:end]
        self.released = max(self.released, end)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
