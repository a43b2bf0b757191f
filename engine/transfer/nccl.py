"""The nccl backend: prefill and decode on different nodes, bytes over NCCL (CuPy's bindings).

One 2-rank communicator per prefill-decode pair, built lazily on the first HELLO and kept;
its unique id travels in the HELLO reply of the control channel (cuda_ipc_control.py), and it
is rebuilt when either side restarts (nccl_peers.py). Per tensor the sender asks for a grant;
the receiver posts an ncclRecv into the destination (or into a contiguous staging buffer when
the destination is strided or split into pages, copied into place afterwards) and answers OK;
the sender posts the matching ncclSend. Both wait with a deadline (nccl_comm.py); the receiver
then checksums the bytes on its GPU and COMMIT verifies the manifest as for tcp.

Operations on one communicator are matched in order, so each end holds the communicator's lock
across a whole grant: on the sender from the request to the send's completion, on the receiver
from posting the receive to its completion. A receive whose grant could not be sent, or any
failed or timed-out operation, aborts the communicator; the pair rebuilds it on the next HELLO.
"""

from __future__ import annotations

import os

import torch

from engine.transfer.base import DestinationFn, ExpectedTensor, ExpiredFn, TransferError
from engine.transfer.cuda_ipc_channel import ControlChannel, DeviceSenderBase
from engine.transfer.cuda_ipc_checksum import device_checksum
from engine.transfer.cuda_ipc_control import DeviceReceiverBase, Reply
from engine.transfer.cuda_ipc_grants import Connection
from engine.transfer.cuda_ipc_segments import split_like
from engine.transfer.cuda_ipc_sync import follow_current
from engine.transfer.framing import Deadline, Kind
from engine.transfer.nccl_peers import (
    RECEIVER_RANK,
    SENDER_LINKS,
    SENDER_RANK,
    Link,
    ReceiverLinks,
    local_identity,
    parse_identity,
)
from engine.transfer.reservations import Reservation
from engine.transfer.select import require_local

BACKEND = "nccl"


def _cuda_device(device: torch.device | int | None) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    if isinstance(device, int):
        return torch.device("cuda", device)
    if device.type != "cuda":
        raise ValueError(f"the nccl backend needs a CUDA device, got {device}")
    return torch.device("cuda", device.index if device.index is not None else 0)


class NcclReceiver(DeviceReceiverBase):
    """Decode side; destinations are tensors on `device` (any layout)."""

    backend = BACKEND

    def __init__(
        self,
        destination: DestinationFn,
        on_expired: ExpiredFn,
        device: torch.device | int | None = None,
        init_timeout_s: float = 30.0,
        op_timeout_s: float = 30.0,
        **options: object,
    ) -> None:
        require_local(BACKEND)
        cuda = _cuda_device(device)
        self._links = ReceiverLinks(cuda, init_timeout_s)
        self._op_timeout_s = op_timeout_s
        super().__init__(destination, on_expired, cuda, **options)  # type: ignore[arg-type]

    def communicators(self) -> int:
        """Live communicators (one per sender GPU that has talked to this receiver)."""
        return self._links.live()

    def communicators_built(self) -> int:
        return self._links.built

    def close(self) -> None:
        self._links.close()  # first: in-flight receives end at once instead of timing out
        super().close()

    def _greet(self, conn: Connection, header: dict[str, object], reply: Reply) -> None:
        peer = parse_identity(header.get("peer"))
        fields: dict[str, object] = {"instance": self.instance, "pid": os.getpid()}
        conn.peer = self._links.greet(peer, str(header.get("comm", "")), reply, fields)

    def _receive(
        self,
        conn: Connection,
        res: Reservation,
        expected: ExpectedTensor,
        segments: list[torch.Tensor],
    ) -> str:
        link = conn.peer
        if not isinstance(link, Link):
            raise TransferError("no NCCL communicator for this connection")
        comm = link.comm
        direct = len(segments) == 1 and segments[0].is_contiguous()
        with comm.lock:
            if comm.broken:
                raise TransferError("the NCCL communicator with this sender was aborted")
            landing = (
                segments[0]
                if direct
                else torch.empty(expected.shape, dtype=expected.dtype, device=self.device)
            )
            conn.ok({})  # before posting: a first use of a channel blocks until both sides post
            if expected.nbytes:
                deadline = Deadline(min(res.deadline.remaining(), self._op_timeout_s))
                try:
                    comm.recv(landing, SENDER_RANK)
                    comm.wait(deadline, f"receive {expected.name!r}", (landing,))
                except TransferError:
                    self._links.drop(link)
                    raise
            with torch.cuda.stream(comm.stream):
                if not direct:
                    for seg, part in zip(segments, split_like(landing, segments), strict=True):
                        seg.copy_(part)
                return device_checksum(landing)  # synchronizes the stream, copies included


class NcclSender(DeviceSenderBase):
    """Prefill side, one per transfer; communicators are shared by all senders of a process.
    Tensors are sent from `device` (default: the current CUDA device)."""

    backend = BACKEND

    def __init__(
        self,
        corrupt_tensor: str | None = None,
        device: torch.device | int | None = None,
        init_timeout_s: float = 30.0,
        op_timeout_s: float = 30.0,
    ) -> None:
        require_local(BACKEND)
        super().__init__(corrupt_tensor)
        self._device = _cuda_device(device)
        self._init_timeout_s, self._op_timeout_s = init_timeout_s, op_timeout_s
        self._link: Link | None = None

    def _hello(self, channel: ControlChannel, fields: dict[str, object]) -> None:
        with SENDER_LINKS.greeting(channel.address) as held_key:
            fields["peer"] = local_identity(self._device)
            fields["comm"] = held_key
            reply = channel.request(Kind.HELLO, fields)
            timeout = min(self._init_timeout_s, max(channel.deadline.remaining(), 0.0))
            self._link = SENDER_LINKS.accept(channel.address, reply, self._device, timeout)

    def _unreachable(self, address: tuple[str, int]) -> None:
        SENDER_LINKS.forget(address)

    def send(self, name: str, tensor: torch.Tensor) -> None:
        link = self._link
        if link is None:
            raise TransferError("sender is not open")
        comm = link.comm
        src, spec = self.prepare(name, tensor, comm.device)
        with comm.lock:
            if comm.broken:
                raise TransferError("the NCCL communicator with this receiver was aborted")
            self.begin(name, src)
            if spec.nbytes:
                follow_current(comm.stream, comm.device)
                comm.send(src, RECEIVER_RANK)
                deadline = Deadline(min(self.channel.deadline.remaining(), self._op_timeout_s))
                try:
                    comm.wait(deadline, f"send {name!r}", (src,))
                except TransferError:
                    SENDER_LINKS.drop(self.channel.address, link)
                    raise
        self.record(spec)
