"""Choosing a prefill-decode pair's transfer backend, and making its receiver and sender.

The rule (issue 4): same GPU node -> cuda_ipc; GPUs on both -> nccl; otherwise tcp.
"Same GPU node" means more than the same node name: the sender must be able to open the
receiver's CUDA IPC handles, so both processes must see a common GPU (by UUID). Two pods on one
node that were each given their own GPU cannot, and use nccl. A forced backend that cannot work
is an error that says what is missing; it never falls back silently.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from engine.transfer.base import DestinationFn, ExpiredFn, TransferReceiver, TransferSender

BACKENDS = ("tcp", "cuda_ipc", "nccl")
AUTO = "auto"
_PREFERENCE = ("cuda_ipc", "nccl")  # tcp when neither can work


class BackendUnavailable(RuntimeError):
    """A transfer backend was asked for where it cannot work; the message says what is missing."""


@dataclass(frozen=True)
class PeerCaps:
    """What one worker process can do for transfers (exchanged at registration)."""

    node: str  # the node (Kubernetes node name, else hostname) the process runs on
    has_cuda: bool = False
    has_cupy_nccl: bool = False
    gpu_uuids: tuple[str, ...] = ()  # the GPUs this process can see

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "has_cuda": self.has_cuda,
            "has_cupy_nccl": self.has_cupy_nccl,
            "gpu_uuids": list(self.gpu_uuids),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PeerCaps:
        uuids = d.get("gpu_uuids", [])
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise ValueError(f"bad gpu_uuids {uuids!r}")
        return PeerCaps(
            node=str(d["node"]),
            has_cuda=d.get("has_cuda") is True,
            has_cupy_nccl=d.get("has_cupy_nccl") is True,
            gpu_uuids=tuple(uuids),
        )


def missing_for(backend: str, local: PeerCaps, remote: PeerCaps) -> list[str]:
    """Why `backend` cannot work between these two processes; empty when it can."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown transfer backend {backend!r}; expected one of {BACKENDS}")
    missing: list[str] = []
    sides = (("this worker", local), ("the peer", remote))
    if backend in ("cuda_ipc", "nccl"):
        missing += [f"{who} (node {c.node}) has no CUDA GPU" for who, c in sides if not c.has_cuda]
    if backend == "cuda_ipc" and local.has_cuda and remote.has_cuda:
        if local.node != remote.node:
            missing.append(f"the workers are on different nodes ({local.node}, {remote.node})")
        elif not set(local.gpu_uuids) & set(remote.gpu_uuids):
            missing.append(
                f"the workers on node {local.node} see no GPU in common, so CUDA IPC handles "
                "cannot be opened (each was given its own GPUs)"
            )
    if backend == "nccl":
        missing += [
            f"{who} (node {c.node}) lacks CuPy's NCCL bindings (install cupy-cuda12x)"
            for who, c in sides
            if not c.has_cupy_nccl
        ]
    return missing


def choose_backend(local: PeerCaps, remote: PeerCaps, forced: str | None = None) -> str:
    """The pair's backend: `forced` (a name, or None / "auto" to choose) if it can work, else
    BackendUnavailable; chosen: cuda_ipc, then nccl, then tcp."""
    if forced is not None and forced != AUTO:
        missing = missing_for(forced, local, remote)
        if missing:
            raise BackendUnavailable(
                f"transfer backend {forced!r} was forced but cannot work: " + "; ".join(missing)
            )
        return forced
    for backend in _PREFERENCE:
        if not missing_for(backend, local, remote):
            return backend
    return "tcp"


def has_cupy_nccl() -> bool:
    """Whether CuPy's NCCL bindings load in this process."""
    if importlib.util.find_spec("cupy") is None:
        return False
    from engine.transfer.nccl_comm import load_nccl

    try:
        load_nccl()
    except BackendUnavailable:
        return False
    return True


def local_caps(node: str | None = None) -> PeerCaps:
    """This process's capabilities; the node is `node`, else DUET_NODE_NAME (the chart sets
    it to the Kubernetes node name), else the hostname."""
    node = node or os.environ.get("DUET_NODE_NAME") or socket.gethostname()
    has_cuda = torch.cuda.is_available()
    uuids: tuple[str, ...] = ()
    if has_cuda:
        from engine.transfer.cuda_ipc_handles import device_uuid

        uuids = tuple(device_uuid(i) for i in range(torch.cuda.device_count()))
    return PeerCaps(node, has_cuda, has_cuda and has_cupy_nccl(), uuids)


def require_local(backend: str) -> None:
    """BackendUnavailable listing everything `backend` lacks in this process."""
    missing: list[str] = []
    if backend in ("cuda_ipc", "nccl") and not torch.cuda.is_available():
        missing.append(
            f"torch sees no CUDA GPU in this process (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'no'})"
        )
    if backend == "nccl":
        from engine.transfer.nccl_comm import load_nccl

        try:
            load_nccl()
        except BackendUnavailable as e:
            missing.append(str(e))
    if missing:
        raise BackendUnavailable(
            f"the {backend} transfer backend cannot run here: " + "; ".join(missing)
        )


def make_receiver(
    backend: str, destination: DestinationFn, on_expired: ExpiredFn, **options: Any
) -> TransferReceiver:
    """The decode side of `backend`. Options go to its constructor: host, port,
    advertise_host, timeouts; cuda_ipc also needs `pools` (the CUDA tensors destinations are
    views of), nccl takes `device`."""
    if backend == "tcp":
        from engine.transfer.tcp import TcpReceiver

        return TcpReceiver(destination, on_expired, **options)
    if backend == "cuda_ipc":
        from engine.transfer.cuda_ipc import CudaIpcReceiver

        return CudaIpcReceiver(destination, on_expired, **options)
    if backend == "nccl":
        from engine.transfer.nccl import NcclReceiver

        return NcclReceiver(destination, on_expired, **options)
    raise ValueError(f"unknown transfer backend {backend!r}; expected one of {BACKENDS}")


def make_sender(backend: str, **options: Any) -> TransferSender:
    """The prefill side of `backend`, for one transfer (use the descriptor's backend)."""
    if backend == "tcp":
        from engine.transfer.tcp import TcpSender

        return TcpSender(**options)
    if backend == "cuda_ipc":
        from engine.transfer.cuda_ipc import CudaIpcSender

        return CudaIpcSender(**options)
    if backend == "nccl":
        from engine.transfer.nccl import NcclSender

        return NcclSender(**options)
    raise ValueError(f"unknown transfer backend {backend!r}; expected one of {BACKENDS}")


def receiver_backend(configured: str) -> str:
    """The backend a decode worker serves: the configured one, or for `auto` tcp without a GPU
    and nccl with one (it reaches prefill workers on any node; cuda_ipc, same node only, is
    chosen by forcing it)."""
    if configured != "auto":
        return configured
    return "nccl" if torch.cuda.is_available() and has_cupy_nccl() else "tcp"


def receiver_options(
    backend: str, pools: list[torch.Tensor], device: torch.device
) -> dict[str, Any]:
    """What make_receiver needs beyond the callbacks: cuda_ipc exports the pools the
    destinations are views of; nccl needs the device."""
    if backend == "cuda_ipc":
        return {"pools": pools}
    if backend == "nccl":
        return {"device": device}
    return {}
