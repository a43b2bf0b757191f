"""From token events to response pieces: incremental detokenization, then stop strings (on the
text: the stop string and everything after it are never emitted), then tool-call parsing.

Both the non-streaming and the streaming builders run this one pipeline, so a streamed
response concatenates to exactly the non-streamed one.

finish_reason: "stop" when a stop string matched (whatever the engine said), else the
engine's; for chat, "stop" becomes "tool_calls" when the output holds tool calls (a call cut
by "length" stays "length"). When a stop string matches, `text_stopped` turns True: later
tokens add to usage and logprobs but no text, and the caller should end the request
(`finish("stop")`) and abort it on the workers if the engine did not stop by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from control_plane.openai_api.events import FINISH_REASONS, TokenEvent
from control_plane.openai_api.logprobs import TokenLogprob
from control_plane.openai_api.spec import GenerationSpec
from control_plane.openai_api.tools import make_tool_parser
from engine.detokenizer import IncrementalDetokenizer, StopStringMatcher, TokenBytesSource
from engine.tool_calls import ToolCall, new_call_id


@dataclass(frozen=True)
class Delta:
    """What one event (or the finish) adds to the response."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None


class OutputPipeline:
    def __init__(
        self,
        spec: GenerationSpec,
        tokenizer: TokenBytesSource,
        id_factory: Callable[[], str] = new_call_id,
    ) -> None:
        self.spec = spec
        self._detok = IncrementalDetokenizer(tokenizer)
        stops = spec.sampling.stop
        self._matcher = StopStringMatcher(list(stops)) if stops else None
        self._tools = make_tool_parser(spec, id_factory)
        self._want_logprobs = spec.logprobs is not None
        self._matcher_stopped = False
        self._text_chars = 0  # characters the detokenizer has produced
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the prefix cache served (usage details)
        self.tool_call_count = 0
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text_stopped(self) -> bool:
        """A stop string has matched: no more text will be emitted."""
        return self._matcher_stopped

    def _through_stops(self, text: str, final: bool) -> str:
        if self._matcher is None:
            return text
        if self._matcher_stopped:
            return ""
        check = self._matcher.feed(text)
        if check.stopped:
            self._matcher_stopped = True
            return check.emit
        return check.emit + (self._matcher.flush() if final else "")

    def _record(self, event: TokenEvent) -> tuple[TokenLogprob, ...]:
        if not self._want_logprobs:
            return ()
        if event.logprob is None:
            raise ValueError("logprobs were asked for, but the token event carries none")
        top = event.top_logprobs[: self.spec.logprobs]
        return (TokenLogprob(event.token_id, event.logprob, top, self._text_chars),)

    def add(self, event: TokenEvent) -> Delta:
        """One generated token; when it carries a finish_reason the response ends with it."""
        if self.finished:
            raise ValueError("token event after the response finished")
        self.completion_tokens += 1
        self.cached_tokens = max(self.cached_tokens, event.cached_tokens)
        records = self._record(event)
        text = self._detok.add(event.token_id)
        self._text_chars += len(text)
        parsed = self._tools.feed(self._through_stops(text, final=False))
        self.tool_call_count += len(parsed.tool_calls)
        delta = Delta(parsed.content, parsed.tool_calls, records)
        if event.finish_reason is None:
            return delta
        return _merge(delta, self.finish(event.finish_reason))

    def finish(self, engine_reason: str) -> Delta:
        """End of the response: flush held text and settle finish_reason."""
        if self.finished:
            raise ValueError("the response already finished")
        if engine_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}")
        tail = self._detok.flush()
        self._text_chars += len(tail)
        parsed = self._tools.feed(self._through_stops(tail, final=True))
        flushed = self._tools.flush()
        self.tool_call_count += len(parsed.tool_calls) + len(flushed.tool_calls)
        self.finish_reason = self._settle(engine_reason)
        calls = parsed.tool_calls + flushed.tool_calls
        return Delta(parsed.content + flushed.content, calls, (), self.finish_reason)

    def _settle(self, engine_reason: str) -> str:
        reason = "stop" if self.text_stopped else engine_reason
        if self.spec.endpoint == "chat" and self.tool_call_count and reason == "stop":
            return "tool_calls"
        return reason


def _merge(first: Delta, second: Delta) -> Delta:
    return Delta(
        first.content + second.content,
        first.tool_calls + second.tool_calls,
        first.logprobs + second.logprobs,
        second.finish_reason,
    )
