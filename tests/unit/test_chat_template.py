from typing import Any

import pytest

from engine.chat_template import ChatTemplate, ChatTemplateError, render_chat
from engine.model_builder.tokenizer_build import LING_CHAT_TEMPLATE, build_tiny_tokenizer
from engine.tokenizer import Tokenizer

BUILTIN = ChatTemplate(None)
JINJA = ChatTemplate(LING_CHAT_TEMPLATE)
RENDERERS = pytest.mark.parametrize("template", [BUILTIN, JINJA], ids=["builtin", "jinja"])

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city <now>",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS_TEXT = (
    "You may call the tools described below, one JSON object per line:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city'
    ' <now>", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n'
    "</tools>\n"
    "To call a tool, answer with one block per call in exactly this form:\n"
    "<tool_call>\n"
    '{"name": "<tool name>", "arguments": {"<argument>": <value>}}\n'
    "</tool_call>"
)
PARTS = [{"type": "text", "text": "Again"}, {"type": "text", "text": "?"}]
OSLO_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
WEATHER_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(out)
    return Tokenizer.from_dir(out)


@RENDERERS
def test_user_only_gets_a_thinking_off_system_turn(template: ChatTemplate) -> None:
    assert template.render([{"role": "user", "content": "Hi"}]) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|>"
        "<role>HUMAN</role>Hi<|role_end|>"
        "<role>ASSISTANT</role>"
    )


@RENDERERS
def test_system_message_gets_thinking_line_appended(template: ChatTemplate) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": PARTS},
    ]
    assert template.render(messages, add_generation_prompt=False) == (
        "<role>SYSTEM</role>Be brief.\ndetailed thinking off<|role_end|>"
        "<role>HUMAN</role>Hi<|role_end|>"
        "<role>ASSISTANT</role>Hello!<|role_end|>"
        "<role>HUMAN</role>Again?<|role_end|>"
    )


@RENDERERS
def test_thinking_on_and_empty_system(template: ChatTemplate) -> None:
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    assert template.render(messages, enable_thinking=True) == (
        "<role>SYSTEM</role>detailed thinking on<|role_end|>"
        "<role>HUMAN</role>Hi<|role_end|>"
        "<role>ASSISTANT</role>"
    )


@RENDERERS
def test_tools_go_in_the_system_turn(template: ChatTemplate) -> None:
    messages = [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Weather?"}]
    assert template.render(messages, tools=[WEATHER_TOOL]) == (
        "<role>SYSTEM</role>Sys.\n" + TOOLS_TEXT + "\ndetailed thinking off<|role_end|>"
        "<role>HUMAN</role>Weather?<|role_end|>"
        "<role>ASSISTANT</role>"
    )
    without_system = template.render(messages[1:], tools=[WEATHER_TOOL])
    assert without_system.startswith(
        "<role>SYSTEM</role>" + TOOLS_TEXT + "\ndetailed thinking off<|role_end|>"
    )


@RENDERERS
def test_tool_calls_and_grouped_tool_results(template: ChatTemplate) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                WEATHER_CALL,
                OSLO_CALL,
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "content": [{"type": "text", "text": "snow"}]},
        {"role": "assistant", "content": "Sunny and snowy."},
    ]
    assert template.render(messages, add_generation_prompt=False) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|>"
        "<role>HUMAN</role>Weather in Paris and Oslo?<|role_end|>"
        "<role>ASSISTANT</role>"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        "<|role_end|>"
        "<role>OBSERVATION</role><tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nsnow\n</tool_response><|role_end|>"
        "<role>ASSISTANT</role>Sunny and snowy.<|role_end|>"
    )


@RENDERERS
def test_assistant_content_before_tool_call_and_separate_observations(
    template: ChatTemplate,
) -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "r1"},
        {"role": "user", "content": "And?"},
        {"role": "tool", "content": "r2"},
        {"role": "system", "content": "Late note."},
    ]
    assert template.render(messages) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|>"
        "<role>HUMAN</role>Q<|role_end|>"
        "<role>ASSISTANT</role>Checking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "<|role_end|>"
        "<role>OBSERVATION</role><tool_response>\nr1\n</tool_response><|role_end|>"
        "<role>HUMAN</role>And?<|role_end|>"
        "<role>OBSERVATION</role><tool_response>\nr2\n</tool_response><|role_end|>"
        "<role>SYSTEM</role>Late note.<|role_end|>"
        "<role>ASSISTANT</role>"
    )


CONVERSATIONS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    ([{"role": "user", "content": "你好 🚀"}], None),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}], [WEATHER_TOOL] * 2),
    (
        [
            {"role": "tool", "content": "orphan result"},
            {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, WEATHER_CALL]},
            {"role": "tool", "content": "a"},
            {"role": "tool", "content": "b"},
            {"role": "tool", "content": "c"},
        ],
        [],
    ),
]


@pytest.mark.parametrize(("messages", "tools"), CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("thinking", [True, False])
def test_builtin_fallback_equals_jinja_template(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    generation_prompt: bool,
    thinking: bool,
) -> None:
    args = (messages, tools, generation_prompt, thinking)
    assert BUILTIN.render(*args) == JINJA.render(*args)


def test_tokenizer_uses_its_config_template(tok: Tokenizer) -> None:
    assert not tok.chat_template.uses_builtin
    messages = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(messages, tools=[WEATHER_TOOL])
    assert prompt == BUILTIN.render(messages, [WEATHER_TOOL])
    assert render_chat(tok, messages, [WEATHER_TOOL]) == prompt
    assert render_chat(None, messages, add_generation_prompt=False) == BUILTIN.render(
        messages, None, False
    )
    ids = tok.encode(prompt)
    assert ids[:1] == [tok.token_to_id("<role>")]
    assert tok.token_to_id("<tools>") in ids and tok.token_to_id("<|role_end|>") in ids


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "non-empty list"),
        ({"role": "user", "content": "x"}, "non-empty list"),
        (["hello"], r"messages\[0\]: a message must be an object"),
        ([{"role": "developer", "content": "x"}], "unknown role 'developer'"),
        ([{"role": "user"}], r"messages\[0\]: user message is missing 'content'"),
        ([{"role": "assistant", "content": None}], "missing 'content'"),
        ([{"role": "tool", "content": 42}], "string or a list of text parts"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "text"),
        ([{"role": "user", "content": [{"type": "text", "text": 1}]}], "string 'text'"),
        ([{"role": "user", "content": "x", "tool_calls": [WEATHER_CALL]}], "only assistant"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}],
            "not JSON",
        ),
        ([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}], "'name'"),
    ],
)
@RENDERERS
def test_invalid_messages_raise(template: ChatTemplate, messages: Any, error: str) -> None:
    with pytest.raises(ChatTemplateError, match=error):
        template.render(messages)


def test_invalid_tools_and_templates_raise() -> None:
    with pytest.raises(ChatTemplateError, match="tools must be a list"):
        BUILTIN.render([{"role": "user", "content": "x"}], tools={"name": "f"})  # type: ignore[arg-type]
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% if %}").render([{"role": "user", "content": "x"}])
    raising = ChatTemplate("{{ raise_exception('no users here') }}")
    with pytest.raises(ChatTemplateError, match="no users here"):
        raising.render([{"role": "user", "content": "x"}])
    assert issubclass(ChatTemplateError, ValueError)


def test_named_template_list_and_special_token_variables() -> None:
    template = ChatTemplate(
        [
            {"name": "default", "template": "{{ bos_token }}plain"},
            {"name": "tool_use", "template": "{{ tools | length }} tools"},
        ],
        special_tokens={"bos_token": "<s>"},
    )
    messages = [{"role": "user", "content": "x"}]
    assert template.render(messages) == "<s>plain"
    assert template.render(messages, tools=[WEATHER_TOOL]) == "1 tools"


def test_sandbox_blocks_attribute_escape() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        template.render([{"role": "user", "content": "x"}])
