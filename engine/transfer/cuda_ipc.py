"""The cuda_ipc backend: prefill and decode processes on one node, sharing a GPU's memory.

The decode worker exports its pool tensors' storages once (cuda_ipc_handles.py); a prefill
process maps them once per receiver instance and keeps the mapping. Per tensor the sender asks
for a grant (see cuda_ipc_control.py); the receiver answers with where each destination
segment sits in its pools, the sender copies device to device into those views on its own
stream, waits for the copy with a deadline, and says "written". The receiver then checksums
the destination on its GPU (cuda_ipc_checksum.py) and records it; COMMIT verifies the manifest
against those checksums exactly as for tcp.

A destination that is not inside an exported pool (a small per-request tensor, say) is granted
"inline": its bytes come over the control socket and the receiver copies them to the device.

What a grant guarantees: the receiver holds the reservation's write lock until the sender says
"written" (its copy has completed) or its connection ends. A sender killed mid-copy loses its
CUDA context, and with it any copy in flight, as its process exits; the receiver additionally
waits `LOST_GRANT_SETTLE_S` after such a loss before releasing the destination.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from engine.transfer.base import (
    DestinationFn,
    ExpectedTensor,
    ExpiredFn,
    TransferAborted,
    TransferError,
)
from engine.transfer.cuda_ipc_channel import ControlChannel, DeviceSenderBase
from engine.transfer.cuda_ipc_checksum import device_checksum
from engine.transfer.cuda_ipc_control import DeviceReceiverBase, Reply
from engine.transfer.cuda_ipc_grants import Connection
from engine.transfer.cuda_ipc_handles import OPENED, OpenedPools, export_pools
from engine.transfer.cuda_ipc_segments import (
    SegmentPlace,
    gather,
    place_in_pools,
    split_like,
    view_in_pool,
)
from engine.transfer.cuda_ipc_sync import follow_current, wait_stream
from engine.transfer.framing import FrameError, Kind, read_frame_head, recv_exact_into
from engine.transfer.manifest import byte_view
from engine.transfer.reservations import Reservation
from engine.transfer.select import require_local

BACKEND = "cuda_ipc"
LOST_GRANT_SETTLE_S = 0.25


class CudaIpcReceiver(DeviceReceiverBase):
    """Decode side. `pools` are the CUDA tensors (on one device) whose storages destinations
    are views of; they are exported once and must live as long as the receiver."""

    backend = BACKEND

    def __init__(
        self,
        destination: DestinationFn,
        on_expired: ExpiredFn,
        pools: Sequence[torch.Tensor] = (),
        **options: object,
    ) -> None:
        require_local(BACKEND)
        if not pools:
            raise ValueError("cuda_ipc needs at least one CUDA pool tensor to export")
        self._pools = list(pools)
        self._export, self._pool_ptrs = export_pools(self._pools)
        device = self._pools[0].device
        self._stream = torch.cuda.Stream(device)
        super().__init__(destination, on_expired, device, **options)  # type: ignore[arg-type]

    def _greet(self, conn: Connection, header: dict[str, object], reply: Reply) -> None:
        fields: dict[str, object] = {"instance": self.instance, "pid": os.getpid()}
        if header.get("have_instance") != self.instance:
            fields["export"] = self._export
        reply(fields)

    def _receive(
        self,
        conn: Connection,
        res: Reservation,
        expected: ExpectedTensor,
        segments: list[torch.Tensor],
    ) -> str:
        places = [place_in_pools(seg, self._pool_ptrs) for seg in segments]
        if all(place is not None for place in places):
            conn.ok({"mode": "ipc", "segments": [p.to_dict() for p in places if p is not None]})
            _await_written(conn, res, expected.name)
        else:
            conn.ok({"mode": "inline"})
            self._receive_inline(conn, res, expected, segments)
        with torch.cuda.stream(self._stream):
            return device_checksum(gather(segments))

    def _receive_inline(
        self,
        conn: Connection,
        res: Reservation,
        expected: ExpectedTensor,
        segments: list[torch.Tensor],
    ) -> None:
        conn.sock.settimeout(res.deadline.timeout() + 0.5)
        kind, header, payload_len = read_frame_head(conn.sock)
        if (kind, header.get("phase"), header.get("name")) != (Kind.TENSOR, "data", expected.name):
            raise FrameError(f"expected the inline data of {expected.name!r}, got {kind.name}")
        if payload_len != expected.nbytes:
            raise FrameError(f"inline data of {payload_len} B, expected {expected.nbytes}")
        host = torch.empty(expected.shape, dtype=expected.dtype)
        recv_exact_into(conn.sock, byte_view(host))
        with torch.cuda.stream(self._stream):
            for seg, part in zip(segments, split_like(host, segments), strict=True):
                seg.copy_(part)


def _await_written(conn: Connection, res: Reservation, name: str) -> None:
    """Wait for the sender's "written" after an ipc grant (the lease bounds the wait)."""
    conn.sock.settimeout(res.deadline.timeout() + 0.5)
    try:
        kind, header, payload_len = read_frame_head(conn.sock)
    except (OSError, FrameError):
        time.sleep(LOST_GRANT_SETTLE_S)  # see the module doc
        raise
    if kind is Kind.ABORT:
        time.sleep(LOST_GRANT_SETTLE_S)
        raise TransferAborted(f"sender aborted while writing {name!r}: {header.get('reason', '')}")
    if (kind, header.get("phase"), header.get("name"), payload_len) != (
        Kind.TENSOR,
        "written",
        name,
        0,
    ):
        raise FrameError(f"expected 'written' for {name!r}, got {kind.name} {header!r}")


class CudaIpcSender(DeviceSenderBase):
    """Prefill side, one per transfer; the mapped pools are shared by all senders of a process."""

    backend = BACKEND

    def __init__(self, corrupt_tensor: str | None = None) -> None:
        require_local(BACKEND)
        super().__init__(corrupt_tensor)
        self._peer: OpenedPools | None = None

    def _hello(self, channel: ControlChannel, fields: dict[str, object]) -> None:
        fields["have_instance"] = OPENED.known_instance(channel.address)
        reply = channel.request(Kind.HELLO, fields)
        self._peer = OPENED.resolve(channel.address, reply)

    def _unreachable(self, address: tuple[str, int]) -> None:
        OPENED.forget(address)  # a dead receiver: unmap its pools

    def send(self, name: str, tensor: torch.Tensor) -> None:
        peer = self._peer
        if peer is None:
            raise TransferError("sender is not open")
        device = tensor.device if tensor.is_cuda else peer.device
        src, spec = self.prepare(name, tensor, device)
        grant = self.begin(name, src)
        if grant.get("mode") == "ipc":
            self._copy(name, src, grant.get("segments"), peer)
            self.channel.post(Kind.TENSOR, {"phase": "written", "name": name})
        elif grant.get("mode") == "inline":
            host = src.cpu()
            self.channel.post(Kind.TENSOR, {"phase": "data", "name": name}, byte_view(host))
        else:
            raise TransferError(f"receiver granted {name!r} in an unknown mode {grant!r}")
        self.record(spec)

    def _copy(self, name: str, src: torch.Tensor, places: object, peer: OpenedPools) -> None:
        if not isinstance(places, list) or not places:
            raise TransferError(f"receiver granted {name!r} without segments")
        dsts = [
            view_in_pool(peer.storage(p.pool), p, src.dtype)
            for p in map(SegmentPlace.from_dict, places)
        ]
        if not _segments_fit(src, dsts):
            raise TransferError(f"receiver's segments for {name!r} do not match its shape")
        with torch.cuda.device(peer.device):
            if src.is_cuda:
                follow_current(peer.stream, src.device)
            with torch.cuda.stream(peer.stream):
                for dst, part in zip(dsts, split_like(src, dsts), strict=True):
                    dst.copy_(part, non_blocking=True)
            wait_stream(peer.stream, self.channel.deadline, f"copy of {name!r}")


def _segments_fit(src: torch.Tensor, dsts: list[torch.Tensor]) -> bool:
    """Whether `dsts`, stacked along dim 0, have exactly src's shape."""
    if len(dsts) == 1:
        return dsts[0].shape == src.shape
    if src.dim() == 0 or any(d.shape[1:] != src.shape[1:] for d in dsts):
        return False
    return sum(d.shape[0] for d in dsts) == src.shape[0]
