"""The OpenAI generation endpoints (filled in with the protocol layer)."""

from __future__ import annotations

from aiohttp import web


def add_generation_routes(app: web.Application) -> None:
    """Registers POST /v1/chat/completions and /v1/completions."""
