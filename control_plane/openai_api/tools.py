"""Tool calls on the response side: which parser a request needs, and the OpenAI JSON of calls.

Non-streaming: `message.tool_calls` = [{"id", "type": "function", "function": {"name",
"arguments"}}], `arguments` a JSON string. Streaming, per call, as OpenAI sends them: first a
delta with index, id, type and the name (arguments ""), then a delta with index and the
arguments text. Concatenating each call's streamed name and arguments gives the whole call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from control_plane.openai_api.forced_tool import ForcedToolCallParser
from control_plane.openai_api.spec import GenerationSpec
from engine.tool_calls import ParsedOutput, StreamingToolCallParser, ToolCall, new_call_id


class ToolParser(Protocol):
    def feed(self, text: str) -> ParsedOutput: ...

    def flush(self) -> ParsedOutput: ...


class PlainText:
    """The parser for requests without tool parsing: all text is content."""

    def feed(self, text: str) -> ParsedOutput:
        return ParsedOutput(text)

    def flush(self) -> ParsedOutput:
        return ParsedOutput("")


def make_tool_parser(
    spec: GenerationSpec, id_factory: Callable[[], str] = new_call_id
) -> ToolParser:
    if spec.endpoint != "chat" or not spec.tools or not spec.tool_choice.parses_calls:
        return PlainText()
    if spec.tool_prefix:
        return ForcedToolCallParser(spec.tool_prefix, id_factory)
    return StreamingToolCallParser(id_factory)


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def tool_call_deltas(call: ToolCall) -> list[dict[str, Any]]:
    """The streamed deltas of one call, in order (each goes in its own chunk)."""
    opening = {
        "index": call.index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    arguments = {"index": call.index, "function": {"arguments": call.arguments}}
    return [opening, arguments]
