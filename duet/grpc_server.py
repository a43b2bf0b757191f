"""Running a worker's grpc.aio server: health and reflection, a ready line, registration with
the control plane, and a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from duet.registration import Registration

AddServicer = Callable[[grpc.aio.Server], str]  # registers a servicer, returns its full name


@dataclass
class Lifecycle:
    """What the server needs from the engine behind it."""

    drain: Callable[[], None]  # stop taking new work
    is_idle: Callable[[], bool]  # nothing queued or running
    close: Callable[[], None]  # free everything (in-flight requests end with an error)


async def serve(
    add_servicers: list[AddServicer],
    host: str,
    port: int,
    ready_info: dict[str, object],
    lifecycle: Lifecycle,
    registration: Callable[[int], Registration | None] | None = None,
    drain_timeout_s: float = 20.0,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: stop taking work, let running requests finish
    for up to `drain_timeout_s`, deregister, and stop. Prints one JSON line
    `{"event": "ready", "port": ...}` on stdout once listening (port 0 picks a free port)."""
    server = grpc.aio.server()
    names = [add(server) for add in add_servicers]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    await _set_health(health_servicer, names, health_pb2.HealthCheckResponse.SERVING)
    stop, unregister = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reg = registration(bound) if registration is not None else None
    reg_task = asyncio.create_task(reg.run(unregister)) if reg is not None else None
    print(json.dumps({"event": "ready", "host": host, "port": bound, **ready_info}), flush=True)
    await stop.wait()
    lifecycle.drain()
    if reg is not None:
        reg.draining = True
    await _set_health(health_servicer, names, health_pb2.HealthCheckResponse.NOT_SERVING)
    await _wait_idle(lifecycle.is_idle, drain_timeout_s)
    unregister.set()
    if reg_task is not None:
        await asyncio.wait_for(reg_task, timeout=5.0)
    lifecycle.close()
    await server.stop(2.0)
    print(json.dumps({"event": "stopped"}), file=sys.stderr, flush=True)


async def _set_health(servicer: health.aio.HealthServicer, names: list[str], status: int) -> None:
    for name in ["", *names]:
        await servicer.set(name, status)


async def _wait_idle(is_idle: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not is_idle() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
