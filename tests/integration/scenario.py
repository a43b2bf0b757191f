"""Small async helpers for driving worker RPCs step by step in failure scenarios."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc
from duet.wire import sampling_to_pb
from engine.sampling import SamplingParams

T = TypeVar("T")


def run_with_stubs(
    prefill_addr: str,
    decode_addr: str,
    body: Callable[[pb_grpc.PrefillWorkerStub, pb_grpc.DecodeWorkerStub], Awaitable[T]],
) -> T:
    async def main() -> T:
        async with (
            grpc.aio.insecure_channel(prefill_addr) as p,
            grpc.aio.insecure_channel(decode_addr) as d,
        ):
            return await body(pb_grpc.PrefillWorkerStub(p), pb_grpc.DecodeWorkerStub(d))

    return asyncio.run(main())


def reserve_request(
    request_id: str, prompt: list[int], params: SamplingParams, lease_s: float = 5.0
) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        request_id=request_id, prompt_ids=prompt, sampling=sampling_to_pb(params), lease_s=lease_s
    )


def prefill_request(
    request_id: str, prompt: list[int], destination: pb.TransferDescriptor, deadline_s: float = 30.0
) -> pb.PrefillRequest:
    return pb.PrefillRequest(
        request_id=request_id, prompt_ids=prompt, destination=destination, deadline_s=deadline_s
    )


async def collect(stream: grpc.aio.UnaryStreamCall) -> tuple[list[pb.TokenEvent], grpc.StatusCode]:
    """All events of a stream and its final status code (OK or the error)."""
    events: list[pb.TokenEvent] = []
    try:
        async for event in stream:
            events.append(event)
    except grpc.aio.AioRpcError as err:
        return events, err.code()
    return events, grpc.StatusCode.OK
