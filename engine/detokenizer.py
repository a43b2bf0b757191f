"""Streaming text out of a token stream: incremental detokenization and stop strings.

IncrementalDetokenizer works on token bytes, never re-decoding earlier tokens: each `add` costs
O(bytes of the token). The concatenation of everything `add` and `flush` return equals
`tokenizer.decode(all_ids, skip_special_tokens=...)`: bytes of an unfinished UTF-8 character
are held until the character completes, and a sequence that can no longer become valid
becomes one U+FFFD per maximal invalid subpart (the same rule the Rust decoder applies).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class TokenBytesSource(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...

    def is_special(self, token_id: int) -> bool: ...


class IncrementalDetokenizer:
    """Turns token ids into text as they arrive; returns only newly completed text."""

    def __init__(self, tokenizer: TokenBytesSource, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def add_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.add(token_id) for token_id in token_ids)

    @property
    def pending_bytes(self) -> bytes:
        """Bytes of a character that has started but not completed."""
        buffered, _ = self._utf8.getstate()
        return buffered

    def flush(self) -> str:
        """End of stream: an unfinished character becomes U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


@dataclass(frozen=True)
class StopCheck:
    """Result of feeding text: `emit` is safe to emit now; `stop` is the stop string that
    matched (its text and everything after it are never emitted), None if none did."""

    emit: str
    stop: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None


class StopStringMatcher:
    """Finds stop strings in a text stream fed in arbitrary pieces.

    Text that could still be the beginning of a stop string is held back. When several stop
    strings occur, the one that is completed first in the stream wins (ties: the longer one),
    so the result does not depend on how the stream was cut into pieces.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not isinstance(stop, str) or not stop for stop in stops):
            raise ValueError("stop strings must be non-empty strings")
        self._stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self._matched: str | None = None
        self.emitted_chars = 0  # characters of the stream released so far

    @property
    def held(self) -> str:
        return self._held

    def _first_completed(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, int, str] | None = None  # (end, -length, stop)
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0:
                candidate = (start + len(stop), -len(stop), stop)
                best = candidate if best is None else min(best, candidate)
        return None if best is None else (best[0] + best[1], best[2])

    def _holdback_length(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def feed(self, text: str) -> StopCheck:
        if self._matched is not None:
            return StopCheck("", self._matched)
        buffer = self._held + text
        match = self._first_completed(buffer)
        if match is not None:
            start, stop = match
            self._matched, self._held = stop, ""
            self.emitted_chars += start
            return StopCheck(buffer[:start], stop)
        keep = self._holdback_length(buffer)
        safe, self._held = buffer[: len(buffer) - keep], buffer[len(buffer) - keep :]
        self.emitted_chars += len(safe)
        return StopCheck(safe)

    def flush(self) -> str:
        """End of stream: held text can no longer become a stop string."""
        if self._matched is not None:
            return ""
        held, self._held = self._held, ""
        self.emitted_chars += len(held)
        return held
