"""Driving one request across a prefill and a decode worker (the path the router takes):
Reserve on D, Prefill on P toward D's reservation, Stream tokens from D. Every call has a
deadline; any failure aborts the request on both workers so nothing stays allocated, and is
raised as a `StageError` that says which side failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc
from duet.wire import sampling_to_pb
from engine.sampling import SamplingParams

TRANSFER_FAILED = "cache transfer failed"  # prefix of the decode worker's transfer errors


class StageError(RuntimeError):
    """A request failed; `side` is the worker to blame: "prefill" or "decode"."""

    def __init__(self, side: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{side} worker: {code.name}: {details}")
        self.side, self.code, self.details = side, code, details


@dataclass
class WorkerPair:
    prefill: pb_grpc.PrefillWorkerStub
    decode: pb_grpc.DecodeWorkerStub

    @staticmethod
    def connect(prefill_addr: str, decode_addr: str) -> tuple[WorkerPair, list[grpc.aio.Channel]]:
        p, d = grpc.aio.insecure_channel(prefill_addr), grpc.aio.insecure_channel(decode_addr)
        return WorkerPair(pb_grpc.PrefillWorkerStub(p), pb_grpc.DecodeWorkerStub(d)), [p, d]


FINAL_REPLY_WAIT_S = 2.0  # how long the last token waits for the prefill reply's numbers


def _blame_stream(err: grpc.aio.AioRpcError) -> StageError:
    """A stream error from the decode worker: a failed transfer is the prefill side's fault."""
    details = err.details() or ""
    side = "prefill" if details.startswith(TRANSFER_FAILED) else "decode"
    return StageError(side, err.code(), details)


async def generate(
    pair: WorkerPair,
    request_id: str,
    prompt_ids: list[int],
    params: SamplingParams,
    timeout_s: float = 60.0,
    lease_s: float = 30.0,
    local_prefill: bool = False,
) -> AsyncIterator[pb.TokenEvent]:
    """Yields the request's token events (the last has a finish reason: stop, length, or
    preempted); raises StageError. With `local_prefill` the decode worker prefills the prompt
    itself and the prefill worker is not used."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def left() -> float:
        return max(0.001, deadline - loop.time())

    reserve = pb.ReserveRequest(
        request_id=request_id,
        prompt_ids=prompt_ids,
        sampling=sampling_to_pb(params),
        lease_s=min(lease_s, left()),
        local_prefill=local_prefill,
    )
    try:
        reply = await pair.decode.Reserve(reserve, timeout=left())
    except grpc.aio.AioRpcError as err:
        raise StageError("decode", err.code(), err.details() or "") from err
    stream = pair.decode.Stream(pb.StreamRequest(request_id=request_id), timeout=left())
    prefill_task = None
    if not local_prefill:
        prefill = pb.PrefillRequest(
            request_id=request_id,
            prompt_ids=prompt_ids,
            destination=reply.destination,
            deadline_s=left(),
        )
        prefill_task = asyncio.ensure_future(pair.prefill.Prefill(prefill, timeout=left()))
        prefill_task.add_done_callback(lambda t: stream.cancel() if _failed(t) else None)
    finished = False
    cached = _CachedTokens(prefill_task)
    try:
        async for event in _events(stream, prefill_task):
            if event.finish_reason:  # the caches arrived whole, so the reply is (nearly) here
                await cached.wait(min(left(), FINAL_REPLY_WAIT_S))
            cached.stamp(event)
            yield event
            finished = bool(event.finish_reason)
        if not finished:
            raise StageError(
                "decode", grpc.StatusCode.UNAVAILABLE, "stream ended without a finish reason"
            )
        if prefill_task is not None:  # tokens arrived, so the caches were whole
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await asyncio.wait_for(prefill_task, timeout=left())
    finally:
        if not finished:
            if prefill_task is not None:
                prefill_task.cancel()
            await abort_both(pair, request_id)


class _CachedTokens:
    """Stamps `cached_tokens` (prompt minus computed tokens, from the prefill reply) on the
    first event after that reply arrived; the final event waits for it."""

    def __init__(self, prefill_task: asyncio.Future[object] | None) -> None:
        self.task, self.sent = prefill_task, prefill_task is None

    async def wait(self, timeout_s: float) -> None:
        if self.task is not None and not self.task.done():
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout=timeout_s)

    def stamp(self, event: pb.TokenEvent) -> None:
        if self.sent or self.task is None or not self.task.done() or _failed(self.task):
            return
        if self.task.cancelled():
            return
        reply = self.task.result()
        event.cached_tokens = reply.prompt_tokens - reply.computed_tokens  # type: ignore[attr-defined]
        self.sent = True


def _failed(task: asyncio.Future[object]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


async def _events(
    stream: grpc.aio.UnaryStreamCall, prefill_task: asyncio.Future[object] | None
) -> AsyncIterator[pb.TokenEvent]:
    """The stream's events; a failure is blamed on the prefill call when that failed first."""
    try:
        async for event in stream:
            yield event
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
        if prefill_task is not None and _failed(prefill_task):
            perr = prefill_task.exception()
            assert isinstance(perr, grpc.aio.AioRpcError)
            raise StageError("prefill", perr.code(), perr.details() or "") from perr
        if isinstance(err, asyncio.CancelledError):
            raise
        raise _blame_stream(err) from err


async def abort_both(pair: WorkerPair, request_id: str) -> None:
    for stub in (pair.prefill, pair.decode):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Abort(pb.AbortRequest(request_id=request_id), timeout=5.0)
