"""The HTTP gateway's aiohttp application: routes, API-key check, health, metrics, models.
The OpenAI generation endpoints live in http_generate.py."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from control_plane.server import ControlPlane

PLANE = web.AppKey("plane", object)
OPEN_PATHS = ("/health", "/metrics")


def error_json(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


@web.middleware
async def require_api_key(request: web.Request, handler):  # type: ignore[no-untyped-def]
    plane: ControlPlane = request.app[PLANE]  # type: ignore[assignment]
    if request.path not in OPEN_PATHS and not plane.keys.allows(
        request.headers.get("Authorization")
    ):
        return error_json(
            401, "Invalid or missing API key.", "authentication_error", "invalid_api_key"
        )
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """200 when at least one prefill and one decode worker are healthy, else 503."""
    plane: ControlPlane = request.app[PLANE]  # type: ignore[assignment]
    prefill, decode = len(plane.registry.healthy("prefill")), len(plane.registry.healthy("decode"))
    body = {
        "status": "ok" if prefill and decode else "unavailable",
        "prefill_workers": prefill,
        "decode_workers": decode,
        "prefix_cache": plane.prefix_cache_state(),  # degraded never fails the health check
    }
    return web.json_response(body, status=200 if prefill and decode else 503)


async def metrics(request: web.Request) -> web.Response:
    plane: ControlPlane = request.app[PLANE]  # type: ignore[assignment]
    plane.refresh_pool_gauges()
    body = generate_latest(plane.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def models(request: web.Request) -> web.Response:
    plane: ControlPlane = request.app[PLANE]  # type: ignore[assignment]
    entry = {
        "id": plane.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "duet",
    }
    return web.json_response({"object": "list", "data": [entry]})


def build_app(plane: ControlPlane) -> web.Application:
    from control_plane.http_generate import add_generation_routes

    app = web.Application(middlewares=[require_api_key], client_max_size=16 * 1024 * 1024)
    app[PLANE] = plane
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    add_generation_routes(app)
    return app
