"""gRPC face of the prefill worker: Prefill, Abort, Load."""

from __future__ import annotations

import asyncio

import grpc

from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc
from duet.wire import descriptor_from_pb
from engine.transfer.base import ChecksumMismatch, DeadlineExceeded, TransferError
from prefill_worker.engine import Draining, PrefillEngine

DEFAULT_DEADLINE_S = 60.0


def _status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, ChecksumMismatch):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, DeadlineExceeded | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, TransferError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class PrefillService(pb_grpc.PrefillWorkerServicer):
    def __init__(self, engine: PrefillEngine) -> None:
        self.engine = engine

    async def Prefill(
        self, request: pb.PrefillRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrefillResponse:
        deadline_s = request.deadline_s or DEFAULT_DEADLINE_S
        remaining = context.time_remaining()
        if remaining is not None:
            deadline_s = min(deadline_s, remaining)
        try:
            if not request.request_id:
                raise ValueError("request_id is required")
            destination = descriptor_from_pb(request.destination)
            future = self.engine.submit(
                request.request_id, list(request.prompt_ids), destination, deadline_s
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Draining as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout=deadline_s + 1.0)
        except asyncio.CancelledError:  # the caller went away
            self.engine.abort(request.request_id)
            raise
        except TimeoutError:
            self.engine.abort(request.request_id)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "prefill did not finish within its deadline"
            )
        except Exception as exc:
            await context.abort(_status_of(exc), f"prefill failed: {type(exc).__name__}: {exc}")
        return pb.PrefillResponse(
            prompt_tokens=result.prompt_tokens,
            computed_tokens=result.computed_tokens,
            transfer_bytes=result.transfer_bytes,
            compute_s=result.compute_s,
            transfer_s=result.transfer_s,
        )

    async def Abort(
        self, request: pb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortResponse:
        return pb.AbortResponse(found=self.engine.abort(request.request_id))

    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadResponse:
        return pb.LoadResponse(role="prefill", **self.engine.load())  # type: ignore[arg-type]
