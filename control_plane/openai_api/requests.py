"""Parsing and validating `POST /v1/chat/completions` and `POST /v1/completions` bodies into a
GenerationSpec. Every rejection is an ApiError (400, or 404 for an unknown model) in the OpenAI
shape, naming the field in `param`. Unknown fields are ignored, as OpenAI ignores many.

Order of checks: body (UTF-8, JSON, object), model, scalar fields, then the prompt (which
needs tokenizing), then the lengths against the context. A missing `model` means the served
model (as vLLM allows); a named model must be the served name or one of its aliases.

Logprobs: chat takes `logprobs` (bool) and `top_logprobs` (0..20, only with logprobs: true);
completions take `logprobs` as an integer 0..20 (OpenAI allows 5; vLLM and this server 20).
`echo` and `best_of` > 1 on completions are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

from control_plane.openai_api.errors import invalid_request, model_not_found
from control_plane.openai_api.fields import Fields, decode_body, wrong_type
from control_plane.openai_api.prompts import (
    completion_prompt_ids,
    parse_messages,
    render_messages,
)
from control_plane.openai_api.sampling_fields import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    build_sampling,
    check_prompt_fits,
    parse_common,
    resolve_max_tokens,
)
from control_plane.openai_api.spec import GenerationSpec, ServedModel
from control_plane.openai_api.tool_choice import (
    forced_prefix,
    parse_tool_choice,
    parse_tools,
    tools_for_prompt,
)
from engine.sampling import MAX_TOP_LOGPROBS


def _model_name(fields: Fields, model: ServedModel) -> str:
    name = fields.string("model")
    if name is None:
        return model.name
    if not model.serves(name):
        raise model_not_found(name)
    return name


def _stream_options(fields: Fields) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = fields.boolean("stream", False)
    options = fields.mapping("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise invalid_request(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    include_usage = options.get("include_usage", False)
    if include_usage is None:
        include_usage = False
    if not isinstance(include_usage, bool):
        raise wrong_type("stream_options.include_usage", "a boolean", include_usage)
    return stream, include_usage


def _chat_logprobs(fields: Fields) -> int | None:
    wanted = fields.boolean("logprobs", False)
    top = fields.integer("top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise invalid_request(
            "'top_logprobs' is only allowed when 'logprobs' is true.", param="top_logprobs"
        )
    return (top or 0) if wanted else None


def _enable_thinking(fields: Fields) -> bool:
    kwargs = fields.mapping("chat_template_kwargs") or {}
    value = kwargs.get("enable_thinking", False)
    if not isinstance(value, bool):
        raise wrong_type("chat_template_kwargs.enable_thinking", "a boolean", value)
    return value


def _check_response_format(fields: Fields) -> None:
    response_format = fields.mapping("response_format")
    if response_format is not None and response_format.get("type", "text") != "text":
        raise invalid_request(
            f"'response_format' type {response_format.get('type')!r} is not supported yet; "
            "only 'text' is.",
            param="response_format",
        )


def _chat_max_tokens(fields: Fields) -> tuple[int | None, str]:
    for name in ("max_completion_tokens", "max_tokens"):
        value = fields.integer(name)
        if value is not None:
            return value, name
    return None, "max_tokens"


def parse_chat_request(raw: bytes, model: ServedModel) -> GenerationSpec:
    fields = Fields(decode_body(raw))
    name = _model_name(fields, model)
    common = parse_common(fields, model)
    stream, include_usage = _stream_options(fields)
    logprobs = _chat_logprobs(fields)
    requested, max_name = _chat_max_tokens(fields)
    _check_response_format(fields)
    tools = parse_tools(fields.raw("tools"))
    choice = parse_tool_choice(fields.raw("tool_choice"), tools)
    messages = parse_messages(fields.raw("messages"))
    prefix = forced_prefix(choice)
    text = render_messages(
        model, messages, tools_for_prompt(tools, choice), _enable_thinking(fields)
    )
    prompt_ids = tuple(model.tokenizer.encode(text + prefix))
    check_prompt_fits(len(prompt_ids), model, "messages")
    max_tokens = resolve_max_tokens(requested, max_name, len(prompt_ids), model, None)
    return GenerationSpec(
        endpoint="chat",
        model=name,
        prompt_ids=prompt_ids,
        sampling=build_sampling(common, max_tokens, logprobs),
        stream=stream,
        include_usage=include_usage,
        return_tokens_as_token_ids=fields.boolean("return_tokens_as_token_ids", False),
        tools=tools,
        tool_choice=choice,
        tool_prefix=prefix,
        user=fields.string("user"),
    )


def _refuse_completion_extras(fields: Fields) -> None:
    if fields.boolean("echo", False):
        raise invalid_request("'echo' is not supported yet.", param="echo")
    best_of = fields.integer("best_of", minimum=1)
    if best_of is not None and best_of > 1:
        raise invalid_request("best_of > 1 is not supported yet.", param="best_of")
    if fields.string("suffix"):
        raise invalid_request("'suffix' is not supported yet.", param="suffix")


def _completion_max_tokens(body: dict[str, Any], fields: Fields) -> tuple[int | None, int | None]:
    """(requested, default): absent -> default 16; explicit null -> fill to the limit."""
    if "max_tokens" not in body:
        return None, COMPLETIONS_DEFAULT_MAX_TOKENS
    return fields.integer("max_tokens"), None


def parse_completion_request(raw: bytes, model: ServedModel) -> GenerationSpec:
    body = decode_body(raw)
    fields = Fields(body)
    name = _model_name(fields, model)
    common = parse_common(fields, model)
    stream, include_usage = _stream_options(fields)
    logprobs = fields.integer("logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    _refuse_completion_extras(fields)
    requested, default = _completion_max_tokens(body, fields)
    prompt_ids = completion_prompt_ids(fields.raw("prompt"), model)
    check_prompt_fits(len(prompt_ids), model, "prompt")
    max_tokens = resolve_max_tokens(requested, "max_tokens", len(prompt_ids), model, default)
    return GenerationSpec(
        endpoint="completion",
        model=name,
        prompt_ids=prompt_ids,
        sampling=build_sampling(common, max_tokens, logprobs),
        stream=stream,
        include_usage=include_usage,
        return_tokens_as_token_ids=fields.boolean("return_tokens_as_token_ids", False),
        user=fields.string("user"),
    )
