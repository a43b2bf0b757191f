"""gRPC face of the decode worker: Reserve, Stream, Abort, Load."""

from __future__ import annotations

import asyncio

import grpc

from decode_worker.engine import DecodeEngine, Draining
from decode_worker.request import Event, Failure, Preempted, TokenOut
from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc
from duet.wire import descriptor_to_pb, sampling_from_pb
from engine.cache.allocator import OutOfCapacity


def token_event(event: TokenOut) -> pb.TokenEvent:
    s = event.sampled
    return pb.TokenEvent(
        token_id=s.token,
        logprob=s.logprob,
        top_logprobs=[pb.TopLogprob(token_id=t, logprob=lp) for t, lp in s.top],
        finish_reason=event.finish_reason or "",
    )


class DecodeService(pb_grpc.DecodeWorkerServicer):
    def __init__(self, engine: DecodeEngine) -> None:
        self.engine = engine

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        try:
            params = sampling_from_pb(request.sampling)
            if not request.request_id:
                raise ValueError("request_id is required")
            descriptor = await asyncio.to_thread(
                self.engine.reserve,
                request.request_id,
                list(request.prompt_ids),
                params,
                request.local_prefill,
                request.lease_s,
            )

        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except OutOfCapacity as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Draining as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if descriptor is None:  # local prefill: nothing to transfer
            return pb.ReserveResponse()
        return pb.ReserveResponse(destination=descriptor_to_pb(descriptor))

    async def Stream(self, request: pb.StreamRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        if not self.engine.attach(request.request_id, sink):
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no request {request.request_id!r} on this worker"
            )
        finished = False
        try:
            while not finished:
                event = await events.get()
                if isinstance(event, Failure):
                    finished = True
                    await context.abort(grpc.StatusCode[event.code], event.message)
                if isinstance(event, Preempted):
                    yield pb.TokenEvent(finish_reason="preempted")
                    return
                finished = event.finish_reason is not None  # type: ignore[union-attr]
                yield token_event(event)  # type: ignore[arg-type]
        finally:
            if not finished:  # the client went away: free the request
                self.engine.abort(request.request_id)

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortResponse:
        return pb.AbortResponse(
            found=await asyncio.to_thread(self.engine.abort, request.request_id)
        )

    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadResponse:
        return pb.LoadResponse(role="decode", **self.engine.load())  # type: ignore[arg-type]
