"""Tool calls in model output: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

A block is valid when its body (whitespace-trimmed) is a JSON object with a non-empty string
`name` and an `arguments` object (absent means {}). Valid blocks become tool calls, their
arguments re-serialized as a JSON string the way OpenAI returns them. Everything else is
content, including malformed and unterminated blocks, verbatim. Whitespace directly before a
valid block's `<tool_call>` and directly after its `</tool_call>` is dropped from content.

`parse_tool_calls` parses a whole text; `StreamingToolCallParser` parses the same text fed in
arbitrary pieces and yields deltas whose concatenation equals the whole parse. It never emits
a partial `<tool_call>` tag as content: a suffix that could still become the tag is held back,
as is trailing whitespace that may turn out to precede a valid block.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str  # JSON text of the arguments object


@dataclass(frozen=True)
class ParsedOutput:
    """A whole parse, or one streaming delta: content text and completed tool calls."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()


def parse_call_body(body: str) -> tuple[str, str] | None:
    """(name, arguments JSON) of a block body, or None when the body is not a valid call."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    name = payload.get("name")
    arguments = payload.get("arguments", {})
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return name, json.dumps(arguments, ensure_ascii=False)


def parse_tool_calls(text: str, id_factory: Callable[[], str] = new_call_id) -> ParsedOutput:
    content: list[str] = []
    calls: list[ToolCall] = []
    position = 0
    after_valid_block = False
    while True:
        start = text.find(OPEN_TAG, position)
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG)) if start >= 0 else -1
        if end < 0:  # no further complete block: the rest is content
            tail = text[position:]
            content.append(tail.lstrip() if after_valid_block else tail)
            break
        segment = text[position:start]
        if after_valid_block:
            segment = segment.lstrip()
        block_end = end + len(CLOSE_TAG)
        parsed = parse_call_body(text[start + len(OPEN_TAG) : end])
        if parsed is None:
            content.append(segment + text[start:block_end])
        else:
            content.append(segment.rstrip())
            calls.append(ToolCall(len(calls), id_factory(), *parsed))
        after_valid_block = parsed is not None
        position = block_end
    return ParsedOutput("".join(content), tuple(calls))


def _partial_tag_length(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class StreamingToolCallParser:
    """Incremental twin of parse_tool_calls; feed text pieces, then flush once."""

    def __init__(self, id_factory: Callable[[], str] = new_call_id) -> None:
        self._id_factory = id_factory
        self._buffer = ""  # unprocessed text (content mode) or block body so far (block mode)
        self._in_block = False
        self._held_space = ""  # trailing whitespace of content, undecided
        self._space_before_block = ""  # whitespace in front of the open block
        self._after_valid_block = False
        self._count = 0

    def _content(self, piece: str) -> str:
        """Emit content, applying the whitespace rules around valid blocks."""
        if self._after_valid_block:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._after_valid_block = False
        body = piece.rstrip()
        if not body:
            self._held_space += piece
            return ""
        released = self._held_space + body
        self._held_space = piece[len(body) :]
        return released

    def _close_block(self, body: str) -> ParsedOutput:
        parsed = parse_call_body(body)
        space, self._space_before_block = self._space_before_block, ""
        self._in_block = False
        if parsed is None:
            self._after_valid_block = False
            return ParsedOutput(space + OPEN_TAG + body + CLOSE_TAG)
        call = ToolCall(self._count, self._id_factory(), *parsed)
        self._count += 1
        self._after_valid_block = True
        return ParsedOutput("", (call,))

    def _step(self) -> ParsedOutput | None:
        """Consume as much of the buffer as is decidable; None when more text is needed."""
        if self._in_block:
            end = self._buffer.find(CLOSE_TAG)
            if end < 0:
                return None
            body, self._buffer = self._buffer[:end], self._buffer[end + len(CLOSE_TAG) :]
            return self._close_block(body)
        start = self._buffer.find(OPEN_TAG)
        if start < 0:
            keep = _partial_tag_length(self._buffer, OPEN_TAG)
            piece = self._buffer[: len(self._buffer) - keep]
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return ParsedOutput(self._content(piece)) if piece else None
        released = self._content(self._buffer[:start])
        self._space_before_block, self._held_space = self._held_space, ""
        self._buffer = self._buffer[start + len(OPEN_TAG) :]
        self._in_block = True
        return ParsedOutput(released)

    def feed(self, text: str) -> ParsedOutput:
        self._buffer += text
        content: list[str] = []
        calls: list[ToolCall] = []
        while (step := self._step()) is not None:
            content.append(step.content)
            calls.extend(step.tool_calls)
        return ParsedOutput("".join(content), tuple(calls))

    def flush(self) -> ParsedOutput:
        """End of stream: held text and an unterminated block are content."""
        if self._in_block:
            text = self._space_before_block + OPEN_TAG + self._buffer
            self._space_before_block = ""
        else:
            text = self._content(self._buffer) + self._held_space
        self._buffer, self._held_space, self._in_block = "", "", False
        return ParsedOutput(text)
