"""A worker's side of the registry: register, heartbeat its load, re-register after a control
plane restart, announce draining, deregister. Never fatal: the worker keeps serving while the
control plane is away, and every call has a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from duet.v1 import control_pb2 as cpb
from duet.v1 import control_pb2_grpc as cpb_grpc
from duet.v1 import worker_pb2 as pb

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 2.0
# gRPC's default reconnect backoff grows past 2 s while a control plane restarts; capped at
# 1 s, a worker registers again within about one second of the control plane coming back.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


@dataclass
class Registration:
    control_plane: str  # host:port
    worker_id: str
    role: str
    address: str  # how the control plane and peers reach this worker
    load: Callable[[], pb.LoadResponse]
    draining: bool = False

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.control_plane, CHANNEL_OPTIONS) as channel:
            stub = cpb_grpc.RegistryStub(channel)
            interval, registered = 0.5, False
            while not stop.is_set():
                try:
                    if not registered:
                        interval = await self._register(stub)
                        registered = True
                    else:
                        registered = await self._heartbeat(stub)
                except grpc.aio.AioRpcError as err:
                    registered = False
                    log.warning("control plane %s: %s", self.control_plane, err.code().name)
                await _wait(stop, interval)
            await self._deregister(stub)

    async def _register(self, stub: cpb_grpc.RegistryStub) -> float:
        info = cpb.WorkerInfo(worker_id=self.worker_id, role=self.role, address=self.address)
        reply = await stub.Register(
            cpb.RegisterRequest(worker=info, load=self.load()), timeout=CALL_TIMEOUT_S
        )
        log.info("registered with %s as %s", self.control_plane, self.worker_id)
        return reply.heartbeat_interval_s or 0.5

    async def _heartbeat(self, stub: cpb_grpc.RegistryStub) -> bool:
        request = cpb.HeartbeatRequest(
            worker_id=self.worker_id, load=self.load(), draining=self.draining
        )
        return (await stub.Heartbeat(request, timeout=CALL_TIMEOUT_S)).known

    async def _deregister(self, stub: cpb_grpc.RegistryStub) -> None:
        request = cpb.DeregisterRequest(worker_id=self.worker_id)
        with contextlib.suppress(grpc.aio.AioRpcError):  # else the registry expires us
            await stub.Deregister(request, timeout=CALL_TIMEOUT_S)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
