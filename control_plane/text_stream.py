"""Turning a request's token events into text increments: incremental UTF-8-safe decoding,
stop strings held back and never emitted."""

from __future__ import annotations

from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from engine.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer)
        self._matcher = StopStringMatcher(list(stops)) if stops else None
        self.stopped = False

    def add(self, token: int) -> str:
        """Text that became safe to show with this token ('' after a stop string)."""
        if self.stopped:
            return ""
        return self._filter(self._detok.add(token))

    def finish(self) -> str:
        """The rest of the text once the request ended."""
        if self.stopped:
            return ""
        text = self._filter(self._detok.flush())
        if self._matcher is not None and not self.stopped:
            text += self._matcher.flush()
        return text

    def _filter(self, text: str) -> str:
        if self._matcher is None:
            return text
        result = self._matcher.feed(text)
        self.stopped = result.stopped
        return result.emit
