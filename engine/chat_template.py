"""Render OpenAI-style chat messages into the Ling-2.6 prompt text.

The model's own jinja `chat_template` (from tokenizer_config.json) is used when present; otherwise
the built-in renderer below, whose output is byte-identical to the template that
`engine.model_builder.tokenizer_build` ships with the tiny tokenizer.

The Ling format, as rendered here (all text literal, no newlines between turns):

    <role>SYSTEM</role>{system turn}<|role_end|>
    <role>HUMAN</role>{user content}<|role_end|>
    <role>ASSISTANT</role>{assistant content and tool calls}<|role_end|>
    <role>OBSERVATION</role><tool_response>\\n{tool content}\\n</tool_response><|role_end|>
    <role>ASSISTANT</role>                  (only with add_generation_prompt)

Rules:
- The prompt always starts with one SYSTEM turn. Its body is the following parts joined by "\\n":
  the content of the first message when that message is a system message and its content is
  not empty; the tools section when tools are given; and last the thinking line
  `detailed thinking off` (`detailed thinking on` with enable_thinking=True). So without a
  system message the turn is just `detailed thinking off`; with one, the thinking line is
  appended on its own line after the system content (after the tools section if any).
- A system message other than the first is rendered in place as a plain SYSTEM turn.
- Tools section: TOOLS_HEADER, then each tool as `json.dumps(tool, ensure_ascii=False)`, one per
  line, then TOOLS_FOOTER (which shows the `<tool_call>` answer format).
- Assistant tool calls: each as `<tool_call>\\n{"name": NAME, "arguments": ARGS}\\n</tool_call>`,
  NAME json-encoded, ARGS the client's arguments string as given (it must parse to a JSON
  object) or the json-encoded arguments object. Calls are separated from the content and from
  each other by "\\n".
- Consecutive tool messages are grouped into one OBSERVATION turn, their `<tool_response>`
  blocks separated by "\\n".
- Content given as a list of `{"type": "text", "text": ...}` parts is joined with "".
Invalid input raises ChatTemplateError (a ValueError) naming the offending message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jinja2
import jinja2.sandbox

ROLES = ("system", "user", "assistant", "tool")
TURN_NAMES = {"system": "SYSTEM", "user": "HUMAN", "assistant": "ASSISTANT", "tool": "OBSERVATION"}
ROLE_END = "<|role_end|>"
TOOLS_HEADER = "You may call the tools described below, one JSON object per line:\n<tools>\n"
TOOLS_FOOTER = (
    "\n</tools>\n"
    "To call a tool, answer with one block per call in exactly this form:\n"
    '<tool_call>\n{"name": "<tool name>", "arguments": {"<argument>": <value>}}\n</tool_call>'
)
Message = dict[str, Any]


class ChatTemplateError(ValueError):
    """The messages, tools or template cannot be rendered."""


def thinking_line(enable_thinking: bool) -> str:
    return "detailed thinking " + ("on" if enable_thinking else "off")


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """The `tojson` filter templates expect: plain json.dumps, no HTML escaping."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                raise ChatTemplateError(f"{where}: content parts must be {{'type': 'text'}} parts")
            if not isinstance(part.get("text"), str):
                raise ChatTemplateError(f"{where}: a text part needs a string 'text'")
            texts.append(part["text"])
        return "".join(texts)
    raise ChatTemplateError(f"{where}: content must be a string or a list of text parts")


def _normalize_tool_call(call: Any, where: str) -> Message:
    if not isinstance(call, Mapping):
        raise ChatTemplateError(f"{where}: a tool call must be an object")
    function = call.get("function", call)
    if not isinstance(function, Mapping):
        raise ChatTemplateError(f"{where}: tool call 'function' must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ChatTemplateError(f"{where}: a tool call needs a non-empty string 'name'")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise ChatTemplateError(f"{where}: tool call arguments are not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ChatTemplateError(f"{where}: tool call arguments must be a JSON object")
    elif not isinstance(arguments, Mapping):
        raise ChatTemplateError(f"{where}: tool call arguments must be an object or JSON string")
    normalized = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if "id" in call:
        normalized["id"] = call["id"]
    return normalized


def _normalize_message(message: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"{where}: a message must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise ChatTemplateError(f"{where}: unknown role {role!r} (expected one of {ROLES})")
    normalized: Message = dict(message)
    tool_calls = message.get("tool_calls") or []
    if role != "assistant" and tool_calls:
        raise ChatTemplateError(f"{where}: only assistant messages may carry tool_calls")
    if not isinstance(tool_calls, list):
        raise ChatTemplateError(f"{where}: tool_calls must be a list")
    normalized["tool_calls"] = [
        _normalize_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(tool_calls)
    ]
    content = message.get("content")
    if content is None:
        if not normalized["tool_calls"]:
            raise ChatTemplateError(f"{where}: {role} message is missing 'content'")
        normalized["content"] = None
    else:
        normalized["content"] = _text_content(content, where)
    return normalized


def normalize_messages(messages: Any) -> list[Message]:
    """Validate messages; content becomes a plain string (None only beside tool calls)."""
    if not isinstance(messages, list | tuple) or not messages:
        raise ChatTemplateError("messages must be a non-empty list")
    return [_normalize_message(message, i) for i, message in enumerate(messages)]


def normalize_tools(tools: Any) -> list[Message]:
    if tools is None:
        return []
    if not isinstance(tools, list | tuple) or not all(isinstance(tool, Mapping) for tool in tools):
        raise ChatTemplateError("tools must be a list of objects")
    return [dict(tool) for tool in tools]


def _render_tool_call(call: Message) -> str:
    function = call["function"]
    arguments = function["arguments"]
    rendered_args = arguments if isinstance(arguments, str) else tojson(arguments)
    name = tojson(function["name"])
    return f'<tool_call>\n{{"name": {name}, "arguments": {rendered_args}}}\n</tool_call>'


def _render_assistant(message: Message) -> str:
    parts = [message["content"]] if message["content"] else []
    parts.extend(_render_tool_call(call) for call in message["tool_calls"])
    return "<role>ASSISTANT</role>" + "\n".join(parts) + ROLE_END


def _system_turn(first: Message, tools: list[Message], enable_thinking: bool) -> str:
    parts = []
    if first["role"] == "system" and first["content"]:
        parts.append(first["content"])
    if tools:
        parts.append(TOOLS_HEADER + "\n".join(tojson(tool) for tool in tools) + TOOLS_FOOTER)
    parts.append(thinking_line(enable_thinking))
    return "<role>SYSTEM</role>" + "\n".join(parts) + ROLE_END


def render_ling(
    messages: list[Message],
    tools: list[Message],
    add_generation_prompt: bool,
    enable_thinking: bool = False,
) -> str:
    """The built-in Ling renderer; expects normalize_messages / normalize_tools output."""
    pieces = [_system_turn(messages[0], tools, enable_thinking)]
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    for i, message in enumerate(rest):
        role = message["role"]
        if role == "assistant":
            pieces.append(_render_assistant(message))
        elif role == "tool":
            opens_group = i == 0 or rest[i - 1]["role"] != "tool"
            closes_group = i == len(rest) - 1 or rest[i + 1]["role"] != "tool"
            pieces.append("<role>OBSERVATION</role>" if opens_group else "\n")
            pieces.append(f"<tool_response>\n{message['content']}\n</tool_response>")
            pieces.append(ROLE_END if closes_group else "")
        else:
            pieces.append(f"<role>{TURN_NAMES[role]}</role>{message['content']}{ROLE_END}")
    if add_generation_prompt:
        pieces.append("<role>ASSISTANT</role>")
    return "".join(pieces)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template error: {message}")


def _make_environment() -> jinja2.Environment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = _raise_exception
    return env


def _select_template(source: Any, has_tools: bool) -> str:
    """tokenizer_config's chat_template is a string or a list of {"name", "template"}."""
    if isinstance(source, str):
        return source
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        chosen = named.get("tool_use") if has_tools and "tool_use" in named else None
        chosen = chosen or named.get("default")
        if isinstance(chosen, str):
            return chosen
    raise ChatTemplateError("chat_template must be a string or a list with a 'default' template")


class ChatTemplate:
    """Renders prompts with a jinja chat template, or the built-in Ling renderer when None."""

    def __init__(
        self,
        source: str | list[dict[str, str]] | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self._source = source
        self._special_tokens = dict(special_tokens or {})
        self._env = _make_environment()
        self._compiled: dict[str, jinja2.Template] = {}

    @property
    def uses_builtin(self) -> bool:
        return self._source is None

    def _template(self, has_tools: bool) -> jinja2.Template:
        text = _select_template(self._source, has_tools)
        if text not in self._compiled:
            try:
                self._compiled[text] = self._env.from_string(text)
            except jinja2.TemplateSyntaxError as exc:
                raise ChatTemplateError(f"chat template does not compile: {exc}") from None
        return self._compiled[text]

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
    ) -> str:
        normalized = normalize_messages(messages)
        tool_list = normalize_tools(tools)
        if self._source is None:
            return render_ling(normalized, tool_list, add_generation_prompt, enable_thinking)
        template = self._template(bool(tool_list))
        try:
            return template.render(
                messages=normalized,
                tools=tool_list or None,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                **self._special_tokens,
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from None


class HasChatTemplate(Protocol):
    @property
    def chat_template(self) -> ChatTemplate: ...


def render_chat(
    tokenizer: HasChatTemplate | None,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool = False,
) -> str:
    """Render with the tokenizer's template (engine.tokenizer.Tokenizer), or built-in if None."""
    template = tokenizer.chat_template if tokenizer is not None else _BUILTIN
    return template.render(messages, tools, add_generation_prompt, enable_thinking)


_BUILTIN = ChatTemplate(None)
