"""POST /v1/chat/completions and /v1/completions: parse with the OpenAI protocol layer, run
through the orchestrator, answer as JSON or as SSE. An error after streaming started is sent in
the stream, then [DONE]; a client that goes away aborts the request on both workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from control_plane.http_app import PLANE
from control_plane.openai_api import (
    ApiError,
    GenerationSpec,
    ResponseAssembler,
    StreamAssembler,
    from_worker_event,
    parse_chat_request,
    parse_completion_request,
    sse_error,
)
from control_plane.openai_api import errors as api_errors
from control_plane.orchestrator import RequestFailed, Task

if TYPE_CHECKING:
    from control_plane.server import ControlPlane

Parser = Callable[[bytes, object], GenerationSpec]
MAX_BODY_BYTES = 16 * 1024 * 1024


def api_error_of(failure: RequestFailed) -> ApiError:
    code = failure.code
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return api_errors.invalid_request(failure.message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return api_errors.rate_limited(1.0, "the cluster is at capacity; retry shortly")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return api_errors.deadline_exceeded()
    if code == grpc.StatusCode.UNAVAILABLE:
        return api_errors.service_unavailable(failure.message, retry_after_s=1.0)
    return api_errors.server_error(failure.message)


def error_response(err: ApiError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.status, headers=err.headers())


class Admission:
    """Bounds requests in flight; past the bound the gateway answers 429 with Retry-After."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0

    @contextlib.contextmanager
    def slot(self):  # type: ignore[no-untyped-def]
        if self.active >= self.limit:
            raise api_errors.rate_limited(1.0, f"too many requests in flight ({self.limit})")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class Timing:
    """TTFT, inter-token latency and end-to-end latency of one request."""

    def __init__(self, plane: ControlPlane) -> None:
        self.metrics, self.start, self.last = plane.metrics, time.monotonic(), None

    def token(self) -> None:
        now = time.monotonic()
        if self.last is None:
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now

    def done(self, outcome: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.e2e.observe(time.monotonic() - self.start)
        self.metrics.requests.labels(outcome=outcome).inc()
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(completion_tokens)


def _task(plane: ControlPlane, spec: GenerationSpec) -> Task:
    rid = uuid.uuid4().hex
    return Task(rid, list(spec.prompt_ids), spec.sampling, plane.cfg.request_timeout_s)


async def _non_streaming(plane: ControlPlane, spec: GenerationSpec) -> web.Response:
    out = ResponseAssembler(spec, plane.tokenizer)
    timing, count = Timing(plane), 0
    try:
        async with contextlib.aclosing(plane.orchestrator.run(_task(plane, spec))) as events:
            async for event in events:
                timing.token()
                count += 1
                out.add(from_worker_event(event))
                if out.pipeline.text_stopped and not out.finished:
                    out.finish("stop")
                if out.finished:
                    break
    except RequestFailed as failure:
        timing.done("error", spec.prompt_tokens, count)
        return error_response(api_error_of(failure))
    timing.done("ok", spec.prompt_tokens, count)
    return web.json_response(out.response())


async def _streaming(
    request: web.Request, plane: ControlPlane, spec: GenerationSpec
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    out = StreamAssembler(spec, plane.tokenizer)
    timing, count, outcome = Timing(plane), 0, "ok"
    try:
        async with contextlib.aclosing(plane.orchestrator.run(_task(plane, spec))) as events:
            async for event in events:
                timing.token()
                count += 1
                text = out.add_sse(from_worker_event(event))
                if out.pipeline.text_stopped and not out.finished:
                    text += out.finish_sse("stop")
                await response.write(text.encode())
                if out.finished:
                    break
    except RequestFailed as failure:
        outcome = "error"
        await response.write((sse_error(api_error_of(failure))).encode())
    except (ConnectionResetError, asyncio.CancelledError):
        outcome = "cancelled"  # the client went away; aclosing() aborted the workers
        raise
    finally:
        timing.done(outcome, spec.prompt_tokens, count)
    await response.write_eof()
    return response


def _handler(parse: Callable[[bytes, object], GenerationSpec]):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.StreamResponse:
        plane: ControlPlane = request.app[PLANE]  # type: ignore[assignment]
        try:
            spec = parse(await request.read(), plane.served)
            with plane.admission.slot():
                if spec.stream:
                    return await _streaming(request, plane, spec)
                return await _non_streaming(plane, spec)
        except ApiError as err:
            return error_response(err)

    return handle


def add_generation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", _handler(parse_chat_request))  # type: ignore[arg-type]
    app.router.add_post("/v1/completions", _handler(parse_completion_request))  # type: ignore[arg-type]
