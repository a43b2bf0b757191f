"""Driving one request across a prefill and a decode worker (the path the router takes):
Reserve on D, Prefill on P toward D's reservation, Stream tokens from D. Every call has a
deadline; any failure aborts the request on both workers so nothing stays allocated."""

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


@dataclass
class WorkerPair:
    prefill: pb_grpc.PrefillWorkerStub
    decode: pb_grpc.DecodeWorkerStub

    @staticmethod
    def connect(prefill_addr: str, decode_addr: str) -> tuple[WorkerPair, list[grpc.aio.Channel]]:
        p, d = grpc.aio.insecure_channel(prefill_addr), grpc.aio.insecure_channel(decode_addr)
        return WorkerPair(pb_grpc.PrefillWorkerStub(p), pb_grpc.DecodeWorkerStub(d)), [p, d]


async def generate(
    pair: WorkerPair,
    request_id: str,
    prompt_ids: list[int],
    params: SamplingParams,
    timeout_s: float = 60.0,
    lease_s: float = 30.0,
) -> AsyncIterator[pb.TokenEvent]:
    """Yields the request's token events; raises grpc.aio.AioRpcError on failure (after
    aborting the request on both workers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def left() -> float:
        return max(0.001, deadline - loop.time())

    reserve = pb.ReserveRequest(
        request_id=request_id,
        prompt_ids=prompt_ids,
        sampling=sampling_to_pb(params),
        lease_s=lease_s,
    )
    reply = await pair.decode.Reserve(reserve, timeout=left())
    finished = False
    prefill_call = None
    try:
        stream = pair.decode.Stream(pb.StreamRequest(request_id=request_id), timeout=left())
        prefill = pb.PrefillRequest(
            request_id=request_id,
            prompt_ids=prompt_ids,
            destination=reply.destination,
            deadline_s=left(),
        )
        prefill_call = pair.prefill.Prefill(prefill, timeout=left())
        async for event in stream:
            yield event
            if event.finish_reason:
                finished = True
        await prefill_call  # surfaces a prefill failure that the stream did not
    finally:
        if not finished:
            if prefill_call is not None:
                prefill_call.cancel()
            await abort_both(pair, request_id)


async def abort_both(pair: WorkerPair, request_id: str) -> None:
    for stub in (pair.prefill, pair.decode):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Abort(pb.AbortRequest(request_id=request_id), timeout=5.0)
