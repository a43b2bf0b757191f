"""Running a grpc.aio server with health and reflection, a ready line, and clean shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

AddServicer = Callable[[grpc.aio.Server], str]  # registers a servicer, returns its full name


async def serve(
    add_servicers: list[AddServicer],
    host: str,
    port: int,
    ready_info: dict[str, object],
    on_stop: Callable[[], None],
    grace_s: float = 5.0,
) -> None:
    """Serve until SIGTERM/SIGINT. Prints one JSON line `{"event": "ready", "port": ...}` on
    stdout once listening (port 0 picks a free port)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    names = [add(server) for add in add_servicers]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names += [health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    for name in ["", *names[:-2]]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(json.dumps({"event": "ready", "host": host, "port": bound, **ready_info}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for name in ["", *names[:-2]]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace_s)
    on_stop()
    print(json.dumps({"event": "stopped"}), file=sys.stderr, flush=True)
