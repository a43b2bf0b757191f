"""Streaming responses: `chat.completion.chunk` and `text_completion` chunks, SSE framing, and
the StreamAssembler that turns token events into chunks.

Chat: the first chunk's delta is {"role": "assistant", "content": ""}; then one chunk per
content delta, and two per tool call (tools.tool_call_deltas); then a chunk with an empty
delta and the finish_reason. Completions: one chunk per text delta, then a chunk with text ""
and the finish_reason. With include_usage every chunk has "usage": null and one more chunk
follows with "choices": [] and the usage; without it no chunk has a "usage" key.
A chunk is sent only when there is something to send: a token that completes no text (part of
a UTF-8 character, text held back as a possible stop string or tool call, a special token)
sends nothing, and its logprobs go with the next chunk that is sent (the finish chunk at the
latest), so the chunks' logprobs concatenate to the non-streamed ones.
SSE: each object as `data: {json}\\n\\n`, then `data: [DONE]\\n\\n` last. An error after the
stream started is sent as `data: {"error": {...}}\\n\\n` followed by `data: [DONE]\\n\\n`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from control_plane.openai_api.errors import ApiError
from control_plane.openai_api.events import TokenEvent
from control_plane.openai_api.logprobs import (
    TokenLogprob,
    TokenNames,
    chat_logprobs,
    completion_logprobs,
)
from control_plane.openai_api.output import Delta, OutputPipeline
from control_plane.openai_api.responses import ResponseIdentity, usage_json
from control_plane.openai_api.spec import GenerationSpec
from control_plane.openai_api.tools import tool_call_deltas
from engine.tokenizer import Tokenizer
from engine.tool_calls import new_call_id

SSE_DONE = "data: [DONE]\n\n"


def sse_event(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def sse_events(objects: Iterable[dict[str, Any]]) -> str:
    return "".join(sse_event(obj) for obj in objects)


def sse_error(error: ApiError) -> str:
    """An error after the stream started: the error event, then [DONE]."""
    return sse_event(error.to_dict()) + SSE_DONE


class StreamAssembler:
    """Feed token events with `add` (or end early with `finish`); each call returns the chunks
    to send now. The first call also returns the chat role chunk; the finishing call also
    returns the finish chunk and, with include_usage, the usage chunk."""

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
        self._chat = spec.endpoint == "chat"
        self._started = False
        self._pending_logprobs: list[TokenLogprob] = []

    @property
    def finished(self) -> bool:
        return self.pipeline.finished

    def start(self) -> list[dict[str, Any]]:
        """The chat role chunk, once (nothing for completions); `add` calls it if needed."""
        if self._started:
            return []
        self._started = True
        if not self._chat:
            return []
        return [self._chunk({"role": "assistant", "content": ""}, None, None)]

    def add(self, event: TokenEvent) -> list[dict[str, Any]]:
        return self.start() + self._chunks_for(self.pipeline.add(event))

    def finish(self, engine_reason: str) -> list[dict[str, Any]]:
        return self.start() + self._chunks_for(self.pipeline.finish(engine_reason))

    def add_sse(self, event: TokenEvent) -> str:
        """SSE text for one event; ends with [DONE] when the event finishes the response."""
        return self._framed(self.add(event))

    def finish_sse(self, engine_reason: str) -> str:
        return self._framed(self.finish(engine_reason))

    def _framed(self, chunks: list[dict[str, Any]]) -> str:
        return sse_events(chunks) + (SSE_DONE if self.finished else "")

    def _take_logprobs(self) -> dict[str, Any] | None:
        if self.spec.logprobs is None or not self._pending_logprobs:
            return None
        records, self._pending_logprobs = self._pending_logprobs, []
        if self._chat:
            return chat_logprobs(records, self._names)
        return completion_logprobs(records, self._names)

    def _chunks_for(self, delta: Delta) -> list[dict[str, Any]]:
        self._pending_logprobs.extend(delta.logprobs)
        chunks = []
        if delta.content:
            chunks.append(self._content_chunk(delta.content, None))
        for call in delta.tool_calls:
            chunks.extend(
                self._chunk({"tool_calls": [piece]}, self._take_logprobs(), None)
                for piece in tool_call_deltas(call)
            )
        if delta.finish_reason is not None:
            chunks.append(self._content_chunk("", delta.finish_reason))
            if self.spec.include_usage:
                chunks.append(self._usage_chunk())
        return chunks

    def _content_chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self._chat:
            delta = {"content": text} if text else {}
            return self._chunk(delta, self._take_logprobs(), finish_reason)
        choice = {
            "index": 0,
            "text": text,
            "logprobs": self._take_logprobs(),
            "finish_reason": finish_reason,
        }
        return self._wrap([choice])

    def _chunk(
        self, delta: dict[str, Any], logprobs: dict[str, Any] | None, finish_reason: str | None
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return self._wrap([choice])

    def _wrap(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        name = "chat.completion.chunk" if self._chat else "text_completion"
        chunk = {**self.identity.envelope(name), "choices": choices}
        if self.spec.include_usage:
            chunk["usage"] = None
        return chunk

    def _usage_chunk(self) -> dict[str, Any]:
        chunk = self._wrap([])
        p = self.pipeline
        chunk["usage"] = usage_json(self.spec.prompt_tokens, p.completion_tokens, p.cached_tokens)
        return chunk
