"""CUDA IPC handles for the cuda_ipc backend.

The decode side exports each pool storage once, through torch's own CUDA IPC primitives
(`UntypedStorage._share_cuda_()` / `UntypedStorage._new_shared_cuda(...)`, the pair that
`torch.multiprocessing` uses; chosen over CuPy's ipcGetMemHandle because they need no CuPy,
resolve storages sub-allocated inside a caching-allocator block, and handle torch's expandable
segments). The export is plain JSON (bytes as base64, no pickle) and travels on the control
channel's HELLO reply, only to senders that have not seen this receiver instance yet.

A prefill process opens a receiver's export once and keeps the mapping per receiver address
(`OPENED`), until the address answers with another instance (the decode worker restarted),
the connection fails, or the entry idles out; a dropped entry unmaps the dead receiver's memory
once its last view is gone, so a restarted decode worker's old pools are not kept alive.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.transfer.base import TransferError

# The 8 values of `_share_cuda_()` in order; bytes values travel as base64.
_SHARE_FIELDS = (
    "device",
    "handle",
    "size_bytes",
    "offset_bytes",
    "ref_counter",
    "ref_counter_offset",
    "event",
    "event_sync",
)
_BYTES_FIELDS = frozenset({"handle", "ref_counter", "event"})
MAX_PEERS = 16
PEER_IDLE_S = 600.0


def device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


def local_index_of(uuid: str) -> int:
    """This process's index of the GPU with `uuid`; TransferError when it cannot see it."""
    for index in range(torch.cuda.device_count()):
        if device_uuid(index) == uuid:
            return index
    raise TransferError(
        f"the receiver's GPU {uuid} is not visible to this process (CUDA_VISIBLE_DEVICES or "
        "container isolation); cuda_ipc needs both processes to see it: use the nccl backend"
    )


def export_pools(pools: Sequence[torch.Tensor]) -> tuple[dict[str, object], list[int]]:
    """(the export to send to senders, the base address of each exported storage). Views of
    one storage are exported once; the storages must stay alive as long as senders may use
    them (the receiver keeps its pools)."""
    device = pools[0].device
    ptrs: list[int] = []
    shares: list[dict[str, object]] = []
    for pool in pools:
        if pool.device != device or device.type != "cuda":
            raise ValueError(f"cuda_ipc pools must all be on one CUDA device, got {pool.device}")
        storage = pool.untyped_storage()
        if storage.data_ptr() in ptrs:
            continue
        share = storage._share_cuda_()
        if len(share) != len(_SHARE_FIELDS):
            raise TransferError(f"unsupported torch CUDA IPC layout ({len(share)} values)")
        entry = dict(zip(_SHARE_FIELDS[1:], share[1:], strict=True))
        shares.append({k: _b64(v) if k in _BYTES_FIELDS else v for k, v in entry.items()})
        ptrs.append(storage.data_ptr())
    return {"device_uuid": device_uuid(device.index or 0), "pools": shares}, ptrs


def open_pools(export: object) -> tuple[torch.device, list[torch.UntypedStorage]]:
    """Map a receiver's exported storages into this process (on the local index of its GPU)."""
    if not isinstance(export, dict) or not isinstance(export.get("pools"), list):
        raise TransferError("malformed cuda_ipc export")
    index = local_index_of(str(export.get("device_uuid")))
    torch.cuda.init()
    storages = []
    for share in export["pools"]:
        args = _share_args(share, index)
        try:
            storages.append(torch.UntypedStorage._new_shared_cuda(*args))
        except RuntimeError as e:
            raise TransferError(f"cannot open the receiver's CUDA IPC handle: {e}") from e
    return torch.device("cuda", index), storages


def _share_args(share: object, index: int) -> tuple[object, ...]:
    if not isinstance(share, dict) or set(share) != set(_SHARE_FIELDS[1:]):
        raise TransferError(f"malformed cuda_ipc pool share {share!r}")
    values: list[object] = [index]
    for field in _SHARE_FIELDS[1:]:
        value = share[field]
        if field in _BYTES_FIELDS:
            value = _unb64(value)
        elif field == "event_sync":
            if not isinstance(value, bool):
                raise TransferError(f"malformed cuda_ipc pool share: {field}={value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TransferError(f"malformed cuda_ipc pool share: {field}={value!r}")
        values.append(value)
    return tuple(values)


def _b64(value: object) -> str:
    if not isinstance(value, bytes):
        raise TransferError(f"expected bytes from torch's CUDA IPC share, got {value!r}")
    return base64.b64encode(value).decode()


def _unb64(value: object) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as e:
        raise TransferError(f"malformed base64 in a cuda_ipc share: {e}") from e


@dataclass
class OpenedPools:
    """One receiver instance's pools as mapped into this process, and a copy stream."""

    instance: str
    device: torch.device
    storages: list[torch.UntypedStorage]
    stream: torch.cuda.Stream
    last_used: float

    def storage(self, pool: int) -> torch.UntypedStorage:
        if not 0 <= pool < len(self.storages):
            raise TransferError(
                f"segment names pool {pool}; the receiver exported {len(self.storages)}"
            )
        return self.storages[pool]


class OpenedPeers:
    """Per receiver address (host, port): the mapping of its current instance's pools."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[tuple[str, int], OpenedPools] = {}

    def known_instance(self, address: tuple[str, int]) -> str:
        with self._lock:
            peer = self._peers.get(address)
            return peer.instance if peer is not None else ""

    def resolve(self, address: tuple[str, int], reply: dict[str, object]) -> OpenedPools:
        """The pools a HELLO reply points at: opened from its export when it carries one (a
        new receiver instance), else the mapping kept for that same instance."""
        instance = str(reply.get("instance", ""))
        with self._lock:
            peer = self._peers.get(address)
            if "export" in reply:
                if peer is None:
                    self._make_room()
                device, storages = open_pools(reply["export"])
                peer = OpenedPools(instance, device, storages, torch.cuda.Stream(device), 0.0)
                self._peers[address] = peer
            elif peer is None or peer.instance != instance:
                self._peers.pop(address, None)  # the next HELLO asks for the pools afresh
                raise TransferError(f"receiver {address} sent no pools for instance {instance!r}")
            peer.last_used = time.monotonic()
            self._drop_idle()
            return peer

    def forget(self, address: tuple[str, int]) -> None:
        with self._lock:
            self._peers.pop(address, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)

    def _drop_idle(self) -> None:
        now = time.monotonic()
        for address, peer in list(self._peers.items()):
            if now - peer.last_used > PEER_IDLE_S:
                del self._peers[address]

    def _make_room(self) -> None:
        while len(self._peers) >= MAX_PEERS:
            oldest = min(self._peers, key=lambda a: self._peers[a].last_used)
            del self._peers[oldest]


OPENED = OpenedPeers()
