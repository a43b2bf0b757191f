"""`duet control-plane`: the registry, the router and the HTTP + gRPC gateway."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from engine.prefix_config import add_redis_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "control-plane",
        help="run the control plane (registry, router, HTTP and gRPC gateway)",
        description="Run the control plane: workers register with its gRPC port; clients send "
        "OpenAI-compatible HTTP requests or duet.v1.Generate calls; each request is routed to a "
        "prefill and a decode worker, retried or migrated on failure.",
    )
    env = os.environ.get
    p.add_argument(
        "--model",
        type=Path,
        default=Path(env("DUET_MODEL", "models/ling-tiny")),
        help="model directory: tokenizer, chat template, limits (env DUET_MODEL)",
    )
    p.add_argument(
        "--host",
        default=env("DUET_HOST", "127.0.0.1"),
        help="address to bind (default: %(default)s)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=int(env("DUET_HTTP_PORT", "8000")),
        help="HTTP port, 0 = any free (default: %(default)s)",
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=int(env("DUET_GRPC_PORT", "50051")),
        help="gRPC port, 0 = any free (default: %(default)s)",
    )
    _add_api_args(p)
    _add_serving_args(p)
    p.set_defaults(func=run)


def _add_api_args(p: argparse.ArgumentParser) -> None:
    """What clients see: the model name, API keys, the prefix-cache index."""
    env = os.environ.get
    p.add_argument(
        "--served-model-name",
        default=env("DUET_SERVED_MODEL_NAME"),
        help="model name in the API (default: the model folder's name)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require this API key (repeatable; env DUET_API_KEYS, comma-separated)",
    )
    add_redis_args(p)  # --redis-url on: route each prompt to the prefill worker with its prefix


def _add_serving_args(p: argparse.ArgumentParser) -> None:
    """Deadlines, worker liveness, routing policy and admission."""
    env = os.environ.get
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=float(env("DUET_REQUEST_TIMEOUT_S", "300")),
        help="deadline of one request (default: %(default)s)",
    )
    p.add_argument(
        "--worker-expiry-s",
        type=float,
        default=3.0,
        help="a worker silent this long leaves the rotation (default: %(default)s)",
    )
    p.add_argument(
        "--local-prefill-max-tokens",
        type=int,
        default=int(env("DUET_LOCAL_PREFILL_MAX_TOKENS", "0")),
        help="prompts this short prefill on the decode worker, skipping the transfer "
        "(conditional disaggregation); 0 = always disaggregate (default: %(default)s)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=1024,
        help="requests in flight before the gateway answers 429 (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from control_plane.auth import ApiKeys
    from control_plane.server import ControlPlane, ControlPlaneConfig

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = ControlPlaneConfig(
            model_dir=args.model,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            served_model_name=args.served_model_name,
            request_timeout_s=args.request_timeout_s,
            worker_expiry_s=args.worker_expiry_s,
            redis_url=args.redis_url,
            redis_password=args.redis_password,
            redis_cluster=args.redis_cluster,
            max_inflight=args.max_inflight,
            local_prefill_max_tokens=args.local_prefill_max_tokens,
        )
        plane = ControlPlane(cfg, ApiKeys.from_env_and_flags(args.api_key))
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"duet control-plane: error: {exc}\n")
        return 2
    asyncio.run(plane.serve())
    return 0
