"""Request validation for /v1/chat/completions and /v1/completions: every bad input gets its
status, type, param and message; good inputs become the GenerationSpec they mean."""

import json
from pathlib import Path
from typing import Any

import pytest

from control_plane.openai_api import (
    ApiError,
    ServedModel,
    ToolChoice,
    parse_chat_request,
    parse_completion_request,
)
from engine.chat_template import render_chat

MODEL = "ling-tiny"
USER = [{"role": "user", "content": "Hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path) -> ServedModel:
    return ServedModel.from_dir(tiny_model_dir, name=MODEL, aliases=("ling",))


def chat(served: ServedModel, **fields: Any) -> Any:
    body = {"model": MODEL, "messages": USER, **fields}
    return parse_chat_request(json.dumps(body).encode(), served)


def completion(served: ServedModel, **fields: Any) -> Any:
    body = {"model": MODEL, "prompt": "Hello", **fields}
    return parse_completion_request(json.dumps(body).encode(), served)


def rejected(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "ling-tiny", "messages": [', "The request body is not valid JSON"),
        (b'{"messages": "\xff\xfe"}', "The request body is not valid UTF-8 (byte 14"),
        (b"[1, 2]", "The request body must be a JSON object, got an array."),
        (b'"text"', "The request body must be a JSON object, got a string."),
        (b"", "The request body is empty; expected a JSON object."),
        (b'{"temperature": NaN}', "The request body is not valid JSON: NaN is not valid JSON."),
    ],
)
@pytest.mark.parametrize("parse", [parse_chat_request, parse_completion_request])
def test_malformed_bodies_are_400(
    served: ServedModel, parse: Any, raw: bytes, message: str
) -> None:
    error = rejected(parse, raw, served)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", None)
    assert error.message.startswith(message)
    assert error.to_dict() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_unknown_model_is_404(served: ServedModel) -> None:
    error = rejected(chat, served, model="gpt-4o")
    assert (error.status, error.type, error.param, error.code) == (
        404,
        "not_found_error",
        "model",
        "model_not_found",
    )
    assert error.message == "The model 'gpt-4o' does not exist or you do not have access to it."
    assert rejected(completion, served, model="other").status == 404


def test_alias_and_missing_model_are_served(served: ServedModel) -> None:
    assert chat(served, model="ling").model == "ling"
    body = json.dumps({"messages": USER}).encode()
    assert parse_chat_request(body, served).model == MODEL


CHAT_BAD_FIELDS = [
    ({"temperature": "hot"}, "temperature", "Invalid type for 'temperature': expected a number"),
    ({"temperature": 2.5}, "temperature", "2.5 is greater than the maximum of 2"),
    ({"temperature": -0.1}, "temperature", "-0.1 must be at least 0"),
    ({"temperature": True}, "temperature", "expected a number, but got a boolean"),
    ({"top_p": 0}, "top_p", "0 must be greater than 0"),
    ({"top_p": 1.5}, "top_p", "1.5 is greater than the maximum of 1"),
    ({"top_k": -2}, "top_k", "-2 is less than the minimum of -1"),
    ({"max_tokens": 0}, "max_tokens", "0 is less than the minimum of 1"),
    ({"max_tokens": -5}, "max_tokens", "-5 is less than the minimum of 1"),
    ({"max_tokens": "10"}, "max_tokens", "expected an integer, but got a string"),
    ({"max_tokens": 1.5}, "max_tokens", "expected an integer, but got a number"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "less than the minimum of 1"),
    ({"stop": 7}, "stop", "expected a string or an array of strings"),
    ({"stop": ["a", 1]}, "stop", "expected a string or an array of strings"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings, got 5"),
    ({"stop": [""]}, "stop", "stop strings must not be empty"),
    ({"seed": "42"}, "seed", "expected an integer, but got a string"),
    ({"seed": 2**64}, "seed", "is greater than the maximum of 9223372036854775807"),
    ({"logprobs": 1}, "logprobs", "expected a boolean, but got a number"),
    (
        {"logprobs": True, "top_logprobs": 21},
        "top_logprobs",
        "21 is greater than the maximum of 20",
    ),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "less than the minimum of 0"),
    ({"top_logprobs": 2}, "top_logprobs", "only allowed when 'logprobs' is true"),
    ({"n": 2}, "n", "n > 1 is not supported yet."),
    ({"n": 0}, "n", "0 is less than the minimum of 1"),
    ({"stream": "yes"}, "stream", "expected a boolean, but got a string"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when 'stream'"),
    ({"stream": True, "stream_options": []}, "stream_options", "expected an object"),
    (
        {"stream": True, "stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
        "expected a boolean",
    ),
    ({"presence_penalty": 0.5}, "presence_penalty", "not supported yet; only 0 is accepted"),
    ({"frequency_penalty": 3}, "frequency_penalty", "3 is greater than the maximum of 2"),
    ({"repetition_penalty": 1.2}, "repetition_penalty", "only 1 is accepted"),
    ({"ignore_eos": "true"}, "ignore_eos", "expected a boolean"),
    ({"min_tokens": -1}, "min_tokens", "less than the minimum of 0"),
    ({"min_tokens": 5, "max_tokens": 3}, "min_tokens", "5 is greater than max_tokens (3)"),
    ({"return_tokens_as_token_ids": 1}, "return_tokens_as_token_ids", "expected a boolean"),
    ({"stop_token_ids": [1, 99999]}, "stop_token_ids", "token ids must be in [0, 2048)"),
    ({"response_format": {"type": "json_object"}}, "response_format", "is not supported yet"),
    ({"messages": []}, "messages", "'messages' must not be empty."),
    ({"messages": None}, "messages", "'messages' is required."),
    ({"messages": "Hi"}, "messages", "expected an array, but got a string"),
    ({"messages": ["Hi"]}, "messages[0]", "expected an object, but got a string"),
    ({"messages": [{"content": "Hi"}]}, "messages[0].role", "expected a string, but got null"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "'robot'"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "a string or an"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content[0].type",
        "only 'text' content parts are supported, got 'image_url'",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
        "expected a string",
    ),
    ({"messages": [{"role": "user"}]}, "messages", "user message is missing 'content'"),
    ({"tools": {}}, "tools", "expected an array, but got an object"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "only 'function' tools"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "non-empty"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "Tool names must be unique"),
    ({"tool_choice": "auto"}, "tool_choice", "needs 'tools'; no tools were given"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "Invalid value"),
    ({"tools": [WEATHER], "tool_choice": 3}, "tool_choice", "expected a string or an object"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice", "must be"),
    (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        "tool_choice",
        "names the function 'x', which is not in 'tools'",
    ),
    (
        {"chat_template_kwargs": {"enable_thinking": "no"}},
        "chat_template_kwargs.enable_thinking",
        "",
    ),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), CHAT_BAD_FIELDS)
def test_chat_bad_fields_are_400_naming_the_field(
    served: ServedModel, fields: dict[str, Any], param: str, fragment: str
) -> None:
    error = rejected(chat, served, **fields)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    assert fragment in error.message


def test_chat_spec_from_a_full_request(served: ServedModel) -> None:
    spec = chat(
        served,
        messages=[{"role": "developer", "content": "Be brief."}, *USER],
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        max_tokens=20,
        stop="END",
        seed=-3,
        logprobs=True,
        top_logprobs=5,
        stream=True,
        stream_options={"include_usage": True},
        ignore_eos=True,
        min_tokens=2,
        return_tokens_as_token_ids=True,
        presence_penalty=0,
        frequency_penalty=0.0,
        n=1,
        user="u-1",
        some_future_field={"ignored": True},
    )
    system_and_user = [{"role": "system", "content": "Be brief."}, *USER]
    text = render_chat(served.tokenizer, system_and_user)
    assert spec.prompt_ids == tuple(served.tokenizer.encode(text))
    s = spec.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop, s.seed) == (
        0.7,
        0.9,
        0,
        20,
        ("END",),
        -3,
    )
    assert (s.logprobs, s.ignore_eos, s.min_tokens) == (5, True, 2)
    assert (spec.stream, spec.include_usage, spec.return_tokens_as_token_ids) == (True, True, True)
    assert (spec.endpoint, spec.n, spec.user, spec.tools, spec.tool_prefix) == (
        "chat",
        1,
        "u-1",
        (),
        "",
    )
    assert spec.tool_choice == ToolChoice("none")


def test_content_parts_render_like_a_string(served: ServedModel) -> None:
    parts = [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]
    assert chat(served, messages=[{"role": "user", "content": parts}]).prompt_ids == (
        chat(served).prompt_ids
    )


def test_tool_choice_modes_and_prefixes(served: ServedModel) -> None:
    with_tools = chat(served, tools=[WEATHER, TIME])
    assert with_tools.tool_choice == ToolChoice("auto")
    assert with_tools.tool_prefix == ""
    text = render_chat(served.tokenizer, USER, tools=[WEATHER, TIME])
    assert with_tools.prompt_ids == tuple(served.tokenizer.encode(text))

    none = chat(served, tools=[WEATHER], tool_choice="none")
    assert none.prompt_ids == chat(served).prompt_ids  # tools are not rendered

    named = chat(
        served,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert named.tool_choice == ToolChoice("function", "get_weather")
    assert named.tool_prefix == '<tool_call>\n{"name": "get_weather", "arguments": '
    assert named.prompt_ids == tuple(served.tokenizer.encode(text + named.tool_prefix))

    required_one = chat(served, tools=[TIME], tool_choice="required")
    assert required_one.tool_choice == ToolChoice("required", "get_time")
    assert required_one.tool_prefix == '<tool_call>\n{"name": "get_time", "arguments": '
    required_any = chat(served, tools=[WEATHER, TIME], tool_choice="required")
    assert required_any.tool_prefix == '<tool_call>\n{"name": "'


def test_assistant_tool_history_is_accepted(served: ServedModel) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ]
    spec = chat(served, messages=messages, tools=[WEATHER])
    text = render_chat(served.tokenizer, messages, tools=[WEATHER])
    assert spec.prompt_ids == tuple(served.tokenizer.encode(text))
    bad = [
        *messages[:1],
        {**messages[1], "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]},
    ]
    error = rejected(chat, served, messages=bad)
    assert (error.status, error.param) == (400, "messages")
    assert "tool call arguments are not JSON" in error.message
