"""`tools` and `tool_choice` of a chat request, and how a forced choice is guaranteed.

Semantics:
- no tools: tool_choice may only be absent or "none"; output is plain content.
- "none": the tools are NOT rendered into the prompt and output is never parsed for calls
  (the model is not told about tools it may not call).
- "auto" (the default with tools): tools are rendered into the system turn; `<tool_call>` blocks
  in the output become tool_calls.
- forced ("required", or {"type": "function", "function": {"name": N}}): tools are rendered and
  the generation prompt is extended with an assistant prefix that opens the call, so the model
  can only continue it:
      named N:                      `<tool_call>\\n{"name": "N", "arguments": `
      "required" with one tool:     the same with that tool's name
      "required" with several:      `<tool_call>\\n{"name": "`  (the model picks the name)
  The response side parses `prefix + generated text` (control_plane.openai_api.forced_tool):
  when the continuation closes the JSON object the result is a tool call, whether or not
  `</tool_call>` follows. When it never closes it (length cut, eos) or closes it with invalid
  JSON, the prefix and the continuation are returned verbatim as content, with the engine's
  finish_reason. No instruction is added to the system turn: the prefix alone decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.openai_api.errors import invalid_request
from control_plane.openai_api.fields import json_type_name, wrong_type
from control_plane.openai_api.spec import ToolChoice
from engine.tool_calls import OPEN_TAG

Tool = Mapping[str, Any]


def _check_tool(tool: Any, index: int) -> str:
    """The tool's function name; 400 naming `tools[i]...` when malformed."""
    where = f"tools[{index}]"
    if not isinstance(tool, Mapping):
        raise wrong_type(where, "an object", tool)
    if tool.get("type") != "function":
        raise invalid_request(
            f"Invalid value for '{where}.type': only 'function' tools are supported.",
            param=f"{where}.type",
        )
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise wrong_type(f"{where}.function", "an object", function)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(
            f"'{where}.function.name' must be a non-empty string.", param=f"{where}.function.name"
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise wrong_type(f"{where}.function.parameters", "an object", parameters)
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise wrong_type(f"{where}.function.description", "a string", description)
    return name


def parse_tools(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise wrong_type("tools", "an array", value)
    names = [_check_tool(tool, i) for i, tool in enumerate(value)]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise invalid_request(f"Tool names must be unique; repeated: {duplicates}.", "tools")
    return tuple(dict(tool) for tool in value)


def _named_choice(value: Mapping[str, Any]) -> str:
    function = value.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if value.get("type") != "function" or not isinstance(name, str) or not name:
        raise invalid_request(
            "Invalid value for 'tool_choice': an object must be "
            '{"type": "function", "function": {"name": "<tool name>"}}.',
            param="tool_choice",
        )
    return name


def parse_tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    names = [tool["function"]["name"] for tool in tools]
    if value is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise invalid_request(
                f"Invalid value for 'tool_choice': '{value}'; expected 'none', 'auto', "
                "'required' or a named function.",
                param="tool_choice",
            )
        choice = ToolChoice(value)  # type: ignore[arg-type]
    elif isinstance(value, Mapping):
        choice = ToolChoice("function", _named_choice(value))
    else:
        raise invalid_request(
            f"Invalid type for 'tool_choice': expected a string or an object, but got "
            f"{json_type_name(value)} instead.",
            param="tool_choice",
        )
    if choice.mode != "none" and not tools:
        raise invalid_request(
            f"'tool_choice' {value!r} needs 'tools'; no tools were given.", param="tool_choice"
        )
    if choice.mode == "function" and choice.name not in names:
        raise invalid_request(
            f"'tool_choice' names the function '{choice.name}', which is not in 'tools' ({names}).",
            param="tool_choice",
        )
    if choice.mode == "required" and len(names) == 1:
        return ToolChoice("required", names[0])
    return choice


def forced_prefix(choice: ToolChoice) -> str:
    """The assistant prefix appended to the generation prompt ("" unless the call is forced)."""
    if choice.mode not in ("function", "required"):
        return ""
    if choice.name is None:
        return OPEN_TAG + '\n{"name": "'
    return (
        OPEN_TAG + '\n{"name": ' + json.dumps(choice.name, ensure_ascii=False) + ', "arguments": '
    )


def tools_for_prompt(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools rendered into the system turn: none when the choice is "none"."""
    return () if choice.mode == "none" else tools
