"""Non-streaming responses: the `chat.completion` and `text_completion` objects, and the
ResponseAssembler that builds them from token events.

Shapes (system_fingerprint only when the server sets one):
    chat.completion:  {id: "chatcmpl-...", object, created, model, choices: [{index: 0,
        message: {role: "assistant", content, tool_calls?}, logprobs, finish_reason}], usage}
    text_completion:  {id: "cmpl-...", object, created, model, choices: [{index: 0, text,
        logprobs, finish_reason}], usage}
`message.content` is null when the answer is only tool calls; `tool_calls` is present only
when there are calls; `logprobs` is null unless asked for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.openai_api.events import TokenEvent
from control_plane.openai_api.logprobs import (
    TokenLogprob,
    TokenNames,
    chat_logprobs,
    completion_logprobs,
)
from control_plane.openai_api.output import Delta, OutputPipeline
from control_plane.openai_api.spec import GenerationSpec
from control_plane.openai_api.tools import tool_call_json
from engine.tokenizer import Tokenizer
from engine.tool_calls import ToolCall, new_call_id

ID_PREFIX = {"chat": "chatcmpl-", "completion": "cmpl-"}


@dataclass(frozen=True)
class ResponseIdentity:
    """What every object of one response shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None

    @classmethod
    def new(
        cls,
        spec: GenerationSpec,
        request_id: str | None = None,
        created: int | None = None,
        system_fingerprint: str | None = None,
    ) -> ResponseIdentity:
        suffix = request_id or uuid.uuid4().hex
        return cls(
            ID_PREFIX[spec.endpoint] + suffix,
            int(time.time()) if created is None else created,
            spec.model,
            system_fingerprint,
        )

    def envelope(self, object_name: str) -> dict[str, Any]:
        head: dict[str, Any] = {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
        }
        if self.system_fingerprint is not None:
            head["system_fingerprint"] = self.system_fingerprint
        return head


def usage_json(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_message(content: str, tool_calls: list[ToolCall]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": (content or None) if tool_calls else content,
    }
    if tool_calls:
        message["tool_calls"] = [tool_call_json(call) for call in tool_calls]
    return message


class ResponseAssembler:
    """Feed every token event (`add`), or end early with `finish`; then `response()`."""

    def __init__(
        self,
        spec: GenerationSpec,
        tokenizer: Tokenizer,
        identity: ResponseIdentity | None = None,
        id_factory: Callable[[], str] = new_call_id,
    ) -> None:
        self.spec = spec
        self.identity = identity or ResponseIdentity.new(spec)
        self.pipeline = OutputPipeline(spec, tokenizer, id_factory)
        self._names = TokenNames(tokenizer, spec.return_tokens_as_token_ids)
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._logprobs: list[TokenLogprob] = []

    @property
    def finished(self) -> bool:
        return self.pipeline.finished

    def _take(self, delta: Delta) -> None:
        self._content.append(delta.content)
        self._calls.extend(delta.tool_calls)
        self._logprobs.extend(delta.logprobs)

    def add(self, event: TokenEvent) -> None:
        self._take(self.pipeline.add(event))

    def finish(self, engine_reason: str) -> None:
        self._take(self.pipeline.finish(engine_reason))

    def usage(self) -> dict[str, Any]:
        p = self.pipeline
        return usage_json(self.spec.prompt_tokens, p.completion_tokens, p.cached_tokens)

    def _logprobs_json(self) -> dict[str, Any] | None:
        if self.spec.logprobs is None:
            return None
        if self.spec.endpoint == "chat":
            return chat_logprobs(self._logprobs, self._names)
        return completion_logprobs(self._logprobs, self._names)

    def response(self) -> dict[str, Any]:
        if not self.finished:
            raise ValueError("the response has not finished")
        choice: dict[str, Any] = {"index": 0}
        if self.spec.endpoint == "chat":
            choice["message"] = chat_message("".join(self._content), self._calls)
            object_name = "chat.completion"
        else:
            choice["text"] = "".join(self._content)
            object_name = "text_completion"
        choice["logprobs"] = self._logprobs_json()
        choice["finish_reason"] = self.pipeline.finish_reason
        return {
            **self.identity.envelope(object_name),
            "choices": [choice],
            "usage": self.usage(),
        }
