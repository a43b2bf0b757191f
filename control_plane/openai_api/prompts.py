"""Prompts: chat `messages` rendered with the model's chat template, and the `prompt` of
/v1/completions (a string, an array of token ids, or an array holding one of either).

Messages: roles system, user, assistant, tool ("developer", which newer clients send for system
instructions, is rendered as system); content a string or an array of {"type": "text"} parts.
Other part types (images, audio) are a 400. Batches of several completion prompts are a 400
until supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.openai_api.errors import invalid_request
from control_plane.openai_api.fields import as_integer, out_of_range, wrong_type
from control_plane.openai_api.spec import ServedModel
from engine.chat_template import ROLES, ChatTemplateError, render_chat

ROLE_ALIASES = {"developer": "system"}


def _check_content(content: Any, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise wrong_type(where, "a string or an array of content parts", content)
    for j, part in enumerate(content):
        if not isinstance(part, Mapping):
            raise wrong_type(f"{where}[{j}]", "an object", part)
        if part.get("type") != "text":
            raise invalid_request(
                f"Invalid value for '{where}[{j}].type': only 'text' content parts are "
                f"supported, got {part.get('type')!r}.",
                param=f"{where}[{j}].type",
            )
        if not isinstance(part.get("text"), str):
            raise wrong_type(f"{where}[{j}].text", "a string", part.get("text"))


def _check_message(message: Any, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(message, Mapping):
        raise wrong_type(where, "an object", message)
    role = message.get("role")
    if not isinstance(role, str):
        raise wrong_type(f"{where}.role", "a string", role)
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise invalid_request(
            f"Invalid value for '{where}.role': '{role}'; expected one of {', '.join(ROLES)}.",
            param=f"{where}.role",
        )
    _check_content(message.get("content"), f"{where}.content")
    return {**message, "role": role}


def parse_messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise invalid_request("'messages' is required.", param="messages")
    if not isinstance(value, list):
        raise wrong_type("messages", "an array", value)
    if not value:
        raise invalid_request("'messages' must not be empty.", param="messages")
    return [_check_message(message, i) for i, message in enumerate(value)]


def render_messages(
    model: ServedModel,
    messages: list[dict[str, Any]],
    tools: tuple[Mapping[str, Any], ...],
    enable_thinking: bool,
) -> str:
    """The prompt text (ending with the generation prompt); ChatTemplateError becomes a 400."""
    try:
        return render_chat(
            model.tokenizer,
            messages,
            tools=list(tools) or None,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
    except ChatTemplateError as exc:
        raise invalid_request(f"Invalid 'messages': {exc}", param="messages") from None


def _check_ids(ids: list[int], model: ServedModel) -> tuple[int, ...]:
    bad = [i for i in ids if not 0 <= i < model.vocab_size]
    if bad:
        raise out_of_range(
            "prompt", f"token ids must be in [0, {model.vocab_size}), got {bad[:5]}."
        )
    return tuple(ids)


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )


def _single_prompt(value: Any, model: ServedModel) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(model.tokenizer.encode(value))
    if _is_id_list(value):
        return _check_ids([as_integer("prompt", v) for v in value], model)
    raise _prompt_type_error(value)


def _prompt_type_error(value: Any) -> Exception:
    return wrong_type(
        "prompt", "a string, an array of token ids, or an array holding one of them", value
    )


def completion_prompt_ids(value: Any, model: ServedModel) -> tuple[int, ...]:
    if value is None:
        raise invalid_request("'prompt' is required.", param="prompt")
    if isinstance(value, list) and value and not _is_id_list(value):
        if not (all(isinstance(v, str) for v in value) or all(_is_id_list(v) for v in value)):
            raise _prompt_type_error(value)
        if len(value) > 1:
            raise invalid_request(
                f"Batched prompts ({len(value)} prompts in one request) are not supported yet; "
                "send one prompt per request.",
                param="prompt",
            )
        value = value[0]
    ids = _single_prompt(value, model)
    if not ids:
        raise invalid_request("The prompt is empty; it must hold at least one token.", "prompt")
    return ids
