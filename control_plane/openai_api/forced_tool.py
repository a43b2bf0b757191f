"""Parsing the output of a forced tool call: `prefix + generated text`, where the prefix opened
a `<tool_call>` block and its JSON object (see control_plane.openai_api.tool_choice).

Phases:
- body: the text after `<tool_call>` (starting with the prefix's part) is scanned, string- and
  escape-aware, until the JSON object that the prefix opened closes. Valid call JSON (the
  engine's `parse_call_body` rules) gives a tool call; invalid JSON gives the block text
  verbatim as content, and the rest is parsed as ordinary output.
- close: after a valid call, whitespace and one `</tool_call>` (if the model writes it) are
  dropped.
- after: the rest goes through the engine's StreamingToolCallParser (more calls or content),
  with whitespace directly after the forced call dropped, as parse_tool_calls does after a
  valid block. Call indexes continue from the forced call.
At flush, a body that never closed is returned as content: `<tool_call>` + body, verbatim.
Feeding the whole text at once or in any pieces gives the same concatenated result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engine.tool_calls import (
    CLOSE_TAG,
    OPEN_TAG,
    ParsedOutput,
    StreamingToolCallParser,
    ToolCall,
    new_call_id,
    parse_call_body,
)


class _JsonObjectEnd:
    """Finds where the first JSON object in a character stream closes."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.opened = False

    def feed(self, text: str) -> int | None:
        """Index in `text` just past the closing brace, or None if not closed yet."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
                self.opened = True
            elif ch in "}]":
                self.depth -= 1
                if self.opened and self.depth <= 0:
                    return i + 1
        return None


class ForcedToolCallParser:
    """Same interface as StreamingToolCallParser; construct with the forced prefix."""

    def __init__(self, prefix: str, id_factory: Callable[[], str] = new_call_id) -> None:
        if not prefix.startswith(OPEN_TAG):
            raise ValueError(f"a forced prefix starts with {OPEN_TAG!r}")
        self._id_factory = id_factory
        self._phase = "body"
        self._body = ""
        self._scanner = _JsonObjectEnd()
        self._pending = ""  # text waiting for the next phase's decision
        self._strip_leading = False
        self._calls_before = 0
        self._inner = StreamingToolCallParser(id_factory)
        self._prefix_output = self._feed_body(prefix[len(OPEN_TAG) :])

    def _feed_body(self, text: str) -> ParsedOutput:
        end = self._scanner.feed(text)
        if end is None:
            self._body += text
            return ParsedOutput("")
        body, rest = self._body + text[:end], text[end:]
        self._body = ""
        parsed = parse_call_body(body)
        if parsed is None:
            self._phase = "after"
            tail = self._feed_after(rest)
            return ParsedOutput(OPEN_TAG + body + tail.content, tail.tool_calls)
        call = ToolCall(0, self._id_factory(), *parsed)
        self._calls_before = 1
        self._phase = "close"
        tail = self._feed_close(rest)
        return ParsedOutput(tail.content, (call, *tail.tool_calls))

    def _feed_close(self, text: str) -> ParsedOutput:
        self._pending += text
        stripped = self._pending.lstrip()
        if len(stripped) < len(CLOSE_TAG) and CLOSE_TAG.startswith(stripped):
            return ParsedOutput("")  # may still become the close tag
        rest = stripped[len(CLOSE_TAG) :] if stripped.startswith(CLOSE_TAG) else stripped
        self._pending = ""
        self._phase = "after"
        self._strip_leading = True
        return self._feed_after(rest)

    def _reindex(self, output: ParsedOutput) -> ParsedOutput:
        calls = tuple(
            dataclasses.replace(call, index=call.index + self._calls_before)
            for call in output.tool_calls
        )
        return ParsedOutput(output.content, calls)

    def _feed_after(self, text: str) -> ParsedOutput:
        if self._strip_leading:
            text = text.lstrip()
            if not text:
                return ParsedOutput("")
            self._strip_leading = False
        return self._reindex(self._inner.feed(text))

    def feed(self, text: str) -> ParsedOutput:
        output = self._take_prefix_output()
        if self._phase == "body":
            step = self._feed_body(text)
        elif self._phase == "close":
            step = self._feed_close(text)
        else:
            step = self._feed_after(text)
        return _join(output, step)

    def _take_prefix_output(self) -> ParsedOutput:
        output, self._prefix_output = self._prefix_output, ParsedOutput("")
        return output

    def flush(self) -> ParsedOutput:
        output = self._take_prefix_output()
        if self._phase == "body":
            body, self._body = self._body, ""
            return _join(output, ParsedOutput(OPEN_TAG + body))
        if self._phase == "close":
            pending, self._pending = self._pending.lstrip(), ""
            output = _join(output, self._feed_after(pending))
        return _join(output, self._reindex(self._inner.flush()))


def _join(first: ParsedOutput, second: ParsedOutput) -> ParsedOutput:
    return ParsedOutput(first.content + second.content, first.tool_calls + second.tool_calls)
