"""The control plane process: the worker registry and the public gRPC API on one port, the
OpenAI-compatible HTTP gateway on another."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_plane.auth import ApiKeys
from control_plane.generate_service import GenerateService
from control_plane.http_generate import Admission
from control_plane.metrics import GatewayMetrics
from control_plane.openai_api import ServedModel
from control_plane.orchestrator import Orchestrator
from control_plane.prefix_routing import PrefixRouting, RedisSettings
from control_plane.registry import Registry
from control_plane.registry_service import RegistryService
from duet.v1 import control_pb2_grpc as cpb_grpc
from duet.v1 import generate_pb2_grpc as gpb_grpc
from engine.config import load_config
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)
SERVICES = ["duet.v1.Registry", "duet.v1.Generate"]


@dataclass(frozen=True)
class ControlPlaneConfig:
    model_dir: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 50051
    served_model_name: str | None = None
    request_timeout_s: float = 300.0
    heartbeat_interval_s: float = 0.5
    worker_expiry_s: float = 3.0
    redis_url: str | None = None  # the prefix-cache index; None = routing ignores caches
    redis_password: str | None = None
    redis_cluster: bool = False
    max_inflight: int = 1024  # requests in flight before the gateway answers 429
    local_prefill_max_tokens: int = 0  # conditional disaggregation threshold, 0 = off


class ControlPlane:
    def __init__(self, cfg: ControlPlaneConfig, keys: ApiKeys) -> None:
        self.cfg, self.keys = cfg, keys
        model_cfg = load_config(cfg.model_dir)
        self.tokenizer = Tokenizer.from_dir(cfg.model_dir)
        self.model_name = cfg.served_model_name or cfg.model_dir.name
        self.max_context = model_cfg.max_position_embeddings
        self.vocab_size = model_cfg.vocab_size
        self.served = ServedModel.from_dir(cfg.model_dir, name=self.model_name)
        self.admission = Admission(cfg.max_inflight)
        self.registry = Registry(cfg.worker_expiry_s, cfg.heartbeat_interval_s)
        self.metrics = GatewayMetrics()
        self.prefix = (
            PrefixRouting(RedisSettings(cfg.redis_url, cfg.redis_password, cfg.redis_cluster))
            if cfg.redis_url
            else None
        )
        self.orchestrator = Orchestrator(
            self.registry,
            self.metrics,
            local_prefill_max_tokens=cfg.local_prefill_max_tokens,
            prefix=self.prefix,
        )

    def prefix_cache_state(self) -> str:
        """What /health reports: off (no index), ok, or degraded (Redis failing somewhere)."""
        if self.prefix is None:
            return "off"
        return self.prefix.state(self.registry.healthy("prefill"))

    def refresh_pool_gauges(self) -> None:
        m = self.metrics
        for role in ("prefill", "decode"):
            workers = self.registry.healthy(role)
            m.pool_workers.labels(pool=role).set(len(workers))
            m.pool_queued_tokens.labels(pool=role).set(sum(w.load.queued_tokens for w in workers))
            running = sum(w.load.running_requests for w in workers)
            m.pool_running_requests.labels(pool=role).set(running)
            m.pool_free_slots.labels(pool=role).set(sum(w.load.free_slots for w in workers))
            m.pool_free_pages.labels(pool=role).set(sum(w.load.free_pages for w in workers))

    def _generate_service(self) -> GenerateService:
        return GenerateService(
            self.orchestrator,
            self.tokenizer,
            self.model_name,
            self.max_context,
            self.vocab_size,
            self.keys,
        )

    async def start_grpc(self) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        cpb_grpc.add_RegistryServicer_to_server(RegistryService(self.registry), server)
        gpb_grpc.add_GenerateServicer_to_server(self._generate_service(), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        port = server.add_insecure_port(f"{self.cfg.host}:{self.cfg.grpc_port}")
        if port == 0:
            raise OSError(f"cannot bind gRPC {self.cfg.host}:{self.cfg.grpc_port}")
        await server.start()
        for name in ["", *SERVICES]:  # serving with no workers too: they register through it
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return server, port

    async def start_http(self) -> tuple[web.AppRunner, int]:
        from control_plane.http_app import build_app

        runner = web.AppRunner(build_app(self), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.http_port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, port

    async def serve(self) -> None:
        grpc_server, grpc_port = await self.start_grpc()
        http_runner, http_port = await self.start_http()
        ready = {"event": "ready", "role": "control-plane", "host": self.cfg.host}
        print(json.dumps({**ready, "http_port": http_port, "grpc_port": grpc_port}), flush=True)
        stop = asyncio.Event()
        prober = asyncio.create_task(self.prefix.probe_forever()) if self.prefix else None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await http_runner.cleanup()
        await grpc_server.stop(2.0)
        await self.orchestrator.channels.close()
        if prober is not None:
            prober.cancel()
            self.prefix.close()  # type: ignore[union-attr]
