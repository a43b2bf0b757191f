"""Worker configuration: one frozen dataclass, built once from CLI flags with DUET_* environment
defaults (the Helm chart sets the environment; flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.prefix_config import PrefixCacheConfig, add_prefix_args, prefix_config_from_args

TRANSFER_BACKENDS = ("tcp", "cuda_ipc", "nccl", "auto")
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class WorkerConfig:
    role: str  # prefill | decode
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    tensor_parallel_size: int = 1
    tp_timeout_s: float = 120.0  # deadline of every collective between the ranks
    num_pages: int = 2048
    page_size: int = 16
    num_slots: int = 64
    max_batch_tokens: int = 4096
    prefill_chunk: int = 512
    transfer_backend: str = "tcp"
    lease_s: float = 30.0
    control_plane: str | None = None  # host:port of the registry; None = standalone
    worker_id: str | None = None
    drain_timeout_s: float = 20.0
    metrics_port: int = 0  # Prometheus /metrics; 0 = not served
    prefix: PrefixCacheConfig = field(default_factory=PrefixCacheConfig)

    def __post_init__(self) -> None:
        if self.role not in ("prefill", "decode"):
            raise ValueError(f"role must be prefill or decode, got {self.role!r}")
        for name in ("num_pages", "page_size", "num_slots", "max_batch_tokens", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= self.port < 65536:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if self.transfer_backend not in TRANSFER_BACKENDS:
            raise ValueError(f"--transfer-backend must be one of {TRANSFER_BACKENDS}")
        if self.lease_s <= 0:
            raise ValueError("--lease-s must be > 0")
        if self.tensor_parallel_size not in TP_SIZES:
            raise ValueError(f"--tensor-parallel-size must be one of {TP_SIZES}")
        if self.tp_timeout_s <= 0:
            raise ValueError("--tp-timeout-s must be > 0")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"DUET_{name}", default)


def add_worker_args(p: argparse.ArgumentParser) -> None:
    """Every worker flag; each defaults to its DUET_* environment variable."""
    _add_placement_args(p)
    _add_capacity_args(p)
    add_registration_args(p)
    add_prefix_args(p)


def _add_placement_args(p: argparse.ArgumentParser) -> None:
    """What to run and where: model, addresses, device, dtype."""
    p.add_argument(
        "--model",
        type=Path,
        default=Path(_env("MODEL", "models/ling-tiny")),
        help="model directory (env DUET_MODEL)",
    )
    p.add_argument(
        "--host", default=_env("HOST", "127.0.0.1"), help="address to bind (default: %(default)s)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", "0")),
        help="gRPC port, 0 = pick a free one (default: %(default)s)",
    )
    p.add_argument(
        "--advertise-host",
        default=os.environ.get("DUET_ADVERTISE_HOST"),
        help="address peers use to reach this worker (env DUET_ADVERTISE_HOST, e.g. the pod IP)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=_env("DEVICE", "cpu"),
        help="(env DUET_DEVICE, default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=_env("DTYPE", "float32"),
        help="(env DUET_DTYPE, default: %(default)s)",
    )
    p.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=int(_env("TENSOR_PARALLEL_SIZE", "1")),
        help="ranks per worker, each holding 1/N of the heads and MLP columns; with cuda, "
        "rank r runs on GPU r (env DUET_TENSOR_PARALLEL_SIZE, default: %(default)s)",
    )
    p.add_argument(
        "--tp-timeout-s",
        type=float,
        default=float(_env("TP_TIMEOUT_S", "120")),
        help="deadline of each collective between the ranks; a rank lost mid-step fails the "
        "worker instead of hanging it (env DUET_TP_TIMEOUT_S, default: %(default)s)",
    )


def _add_capacity_args(p: argparse.ArgumentParser) -> None:
    """Pool sizes, batching and the cache transfer."""
    p.add_argument(
        "--num-pages",
        type=int,
        default=int(_env("NUM_PAGES", "2048")),
        help="latent pool pages (default: %(default)s)",
    )
    p.add_argument(
        "--page-size",
        type=int,
        default=int(_env("PAGE_SIZE", "16")),
        help="tokens per page (default: %(default)s)",
    )
    p.add_argument(
        "--num-slots",
        type=int,
        default=int(_env("NUM_SLOTS", "64")),
        help="state slots = max concurrent sequences (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=int(_env("MAX_BATCH_TOKENS", "4096")),
        help="prefill tokens per step (default: %(default)s)",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=int(_env("PREFILL_CHUNK", "512")),
        help="max tokens of one prompt per prefill step (default: %(default)s)",
    )
    p.add_argument(
        "--transfer-backend",
        choices=TRANSFER_BACKENDS,
        default=_env("TRANSFER_BACKEND", "tcp"),
        help="cache transfer backend (env DUET_TRANSFER_BACKEND, default: %(default)s)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=float(_env("LEASE_S", "30")),
        help="decode: seconds an uncommitted reservation is kept (default: %(default)s)",
    )


def add_registration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0")),
        help="serve Prometheus /metrics on this port, 0 = off (env DUET_METRICS_PORT)",
    )
    p.add_argument(
        "--control-plane",
        default=os.environ.get("DUET_CONTROL_PLANE"),
        help="registry host:port to register with (env DUET_CONTROL_PLANE); omit: standalone",
    )
    p.add_argument(
        "--worker-id",
        default=os.environ.get("DUET_WORKER_ID"),
        help="stable worker id (env DUET_WORKER_ID, default: role-host-port)",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=float(_env("DRAIN_TIMEOUT_S", "20")),
        help="on SIGTERM, seconds to let running requests finish (default: %(default)s)",
    )


def config_from_args(role: str, args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        role=role,
        model_dir=args.model,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        device=args.device,
        dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        tp_timeout_s=args.tp_timeout_s,
        num_pages=args.num_pages,
        page_size=args.page_size,
        num_slots=args.num_slots,
        max_batch_tokens=args.max_batch_tokens,
        prefill_chunk=args.prefill_chunk,
        transfer_backend=args.transfer_backend,
        lease_s=args.lease_s,
        control_plane=args.control_plane,
        worker_id=args.worker_id,
        drain_timeout_s=args.drain_timeout_s,
        metrics_port=args.metrics_port,
        prefix=prefix_config_from_args(args),
    )
