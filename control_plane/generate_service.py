"""The public gRPC API: duet.v1.Generate, with the same semantics as the HTTP API."""

from __future__ import annotations

import uuid

import grpc

from control_plane.auth import ApiKeys
from control_plane.orchestrator import Orchestrator, RequestFailed, Task
from control_plane.text_stream import TextStream
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from duet.wire import sampling_from_pb
from engine.tokenizer import Tokenizer

DEFAULT_TIMEOUT_S = 300.0


class GenerateService(gpb_grpc.GenerateServicer):
    def __init__(
        self,
        orchestrator: Orchestrator,
        tokenizer: Tokenizer,
        model_name: str,
        max_context: int,
        vocab_size: int,
        keys: ApiKeys,
    ) -> None:
        self.orchestrator, self.tokenizer, self.model_name = orchestrator, tokenizer, model_name
        self.max_context, self.vocab_size, self.keys = max_context, vocab_size, keys

    def _prompt(self, request: gpb.GenerateRequest) -> list[int]:
        if request.model and request.model != self.model_name:
            raise ValueError(
                f"model {request.model!r} is not served here (serving {self.model_name!r})"
            )
        kind = request.WhichOneof("prompt")
        if kind is None:
            raise ValueError("a prompt (text or token_ids) is required")
        ids = self.tokenizer.encode(request.text) if kind == "text" else list(request.token_ids.ids)
        if not ids:
            raise ValueError("the prompt is empty")
        bad = [t for t in ids if t >= self.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        if len(ids) >= self.max_context:
            raise ValueError(
                f"prompt of {len(ids)} tokens leaves no room in the context of {self.max_context}"
            )
        return ids

    async def Generate(self, request: gpb.GenerateRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        metadata = dict(context.invocation_metadata() or ())
        if not self.keys.allows(metadata.get("authorization")):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid API key is required (authorization: Bearer <key>)",
            )
        try:
            ids = self._prompt(request)
            params = sampling_from_pb(
                request.sampling if request.HasField("sampling") else pb.SamplingParams()
            )
            if len(ids) + params.max_tokens > self.max_context:
                total = len(ids) + params.max_tokens
                raise ValueError(f"prompt + max_tokens = {total} > context {self.max_context}")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        timeout = context.time_remaining() or DEFAULT_TIMEOUT_S
        task = Task(request.request_id or uuid.uuid4().hex, ids, params, timeout)
        text = TextStream(self.tokenizer, params.stop)
        count = cached = 0
        try:
            async for event in self.orchestrator.run(task):
                count += 1
                cached = max(cached, event.cached_tokens)
                chunk = text.add(event.token_id)
                last = bool(event.finish_reason)
                yield _response(
                    event,
                    chunk + (text.finish() if last else ""),
                    params.logprobs is not None,
                    len(ids) if last else 0,
                    count if last else 0,
                    cached if last else 0,
                )
        except RequestFailed as exc:
            await context.abort(exc.code, exc.message)


def _response(
    event: pb.TokenEvent,
    text: str,
    logprobs: bool,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
) -> gpb.GenerateResponse:
    r = gpb.GenerateResponse(
        token_ids=[event.token_id],
        text=text,
        finish_reason=event.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
    )
    if logprobs:
        r.logprobs.append(event.logprob)
        r.top_logprobs.append(gpb.TopLogprobs(entries=list(event.top_logprobs)))
    return r
