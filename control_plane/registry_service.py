"""gRPC face of the registry: workers register, heartbeat and deregister here."""

from __future__ import annotations

import grpc

from control_plane.registry import Registry
from duet.v1 import control_pb2 as cpb
from duet.v1 import control_pb2_grpc as cpb_grpc


class RegistryService(cpb_grpc.RegistryServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def Register(
        self, request: cpb.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> cpb.RegisterResponse:
        w = request.worker
        try:
            self.registry.register(w.worker_id, w.role, w.address, request.load)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return cpb.RegisterResponse(heartbeat_interval_s=self.registry.heartbeat_interval_s)

    async def Heartbeat(
        self, request: cpb.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> cpb.HeartbeatResponse:
        known = self.registry.heartbeat(request.worker_id, request.load, request.draining)
        return cpb.HeartbeatResponse(known=known)

    async def Deregister(
        self, request: cpb.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> cpb.DeregisterResponse:
        self.registry.deregister(request.worker_id)
        return cpb.DeregisterResponse()
