"""The sender side of the device backends' control channel (shared by cuda_ipc and nccl); the
conversation is described in cuda_ipc_control.py.

Test hook (off by default), the same as the tcp backend's: `corrupt_tensor=NAME`, or
DUET_TRANSFER_TEST_CORRUPT=NAME in the sending process, flips the middle byte of tensor NAME's
row-major bytes after its checksum was taken, so the bytes that land are wrong and the
receiver's device checksum must catch it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch

from engine.transfer.base import (
    DeadlineExceeded,
    TransferDescriptor,
    TransferError,
    TransferSender,
    error_from_kind,
)
from engine.transfer.cuda_ipc_checksum import device_checksum
from engine.transfer.framing import (
    Deadline,
    FrameError,
    Kind,
    discard,
    read_frame_head,
    write_frame,
    write_frame_head,
)
from engine.transfer.manifest import Manifest, TensorSpec, dtype_name
from engine.transfer.tcp_sender import CORRUPT_ENV

_ABORT_GRACE_S = 0.5


class ControlChannel:
    """One connection to a device receiver; every call runs under the transfer's deadline, and
    any failure closes the connection."""

    def __init__(self, descriptor: TransferDescriptor, deadline: Deadline) -> None:
        self.descriptor, self.deadline = descriptor, deadline
        self.address = (descriptor.host, descriptor.port)
        self._sock: socket.socket | None = None

    def connect(self) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=self.deadline.timeout())
        except TimeoutError as e:
            raise DeadlineExceeded(f"connect to {self.address}: no answer in time") from e
        except OSError as e:
            raise TransferError(f"connect to {self.address}: {e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def request(
        self, kind: Kind, header: dict[str, object], payload: bytes = b""
    ) -> dict[str, object]:
        """Send one frame and return the OK reply's fields; raise the receiver's error."""
        with self._io(f"{kind.name.lower()} request") as s:
            write_frame(s, kind, header, payload)
            return _read_reply(s)

    def post(
        self, kind: Kind, header: dict[str, object], payload: memoryview | bytes = b""
    ) -> None:
        """Send one frame that is not answered."""
        with self._io(f"{kind.name.lower()} frame") as s:
            write_frame_head(s, kind, header, len(payload))
            if len(payload):
                s.sendall(payload)

    def abort(self, reason: str) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(min(_ABORT_GRACE_S, self.deadline.timeout()))
            write_frame(sock, Kind.ABORT, {"reason": reason})
        except OSError:
            pass
        finally:
            sock.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @contextmanager
    def _io(self, what: str) -> Iterator[socket.socket]:
        if self._sock is None:
            raise TransferError(f"{what}: sender is not open (never opened, failed or closed)")
        if self.deadline.expired():
            self.close()
            raise DeadlineExceeded(f"{what}: the transfer deadline has passed")
        self._sock.settimeout(self.deadline.timeout())
        try:
            yield self._sock
        except TransferError:
            self.close()
            raise
        except TimeoutError as e:
            self.close()
            raise DeadlineExceeded(f"{what}: the transfer deadline passed") from e
        except (OSError, FrameError) as e:
            self.close()
            raise TransferError(f"{what}: connection to the receiver lost: {e!r}") from e


def _read_reply(sock: socket.socket) -> dict[str, object]:
    kind, header, payload_len = read_frame_head(sock)
    if payload_len:
        discard(sock, payload_len)
    if kind is Kind.ERROR:
        raise error_from_kind(str(header.get("kind")), str(header.get("message")))
    if kind is not Kind.OK:
        raise FrameError(f"expected OK or ERROR, got {kind.name}")
    return header


class DeviceSenderBase(TransferSender):
    """Prefill side of a device backend, one per transfer. Subclasses set `backend` and
    implement `_hello` (greet the receiver over the open channel) and `send`."""

    backend: ClassVar[str] = ""

    def __init__(self, corrupt_tensor: str | None = None) -> None:
        self._corrupt = corrupt_tensor or os.environ.get(CORRUPT_ENV) or None
        self._channel: ControlChannel | None = None
        self._sent: dict[str, TensorSpec] = {}

    def _hello(self, channel: ControlChannel, fields: dict[str, object]) -> None:
        """Send HELLO with `fields` plus the backend's own, and take in the reply."""
        raise NotImplementedError

    def _unreachable(self, address: tuple[str, int]) -> None:
        """The receiver at `address` could not be reached: drop what is kept for it."""

    def open(self, descriptor: TransferDescriptor, deadline_s: float) -> None:
        if descriptor.backend != self.backend:
            raise ValueError(
                f"{type(self).__name__} cannot use a {descriptor.backend!r} descriptor"
            )
        if self._channel is not None:
            raise TransferError("this sender was already opened; use one sender per transfer")
        channel = ControlChannel(descriptor, Deadline(deadline_s))
        self._channel = channel
        try:
            channel.connect()
        except TransferError:
            self._unreachable(channel.address)
            raise
        fields: dict[str, object] = {
            "backend": self.backend,
            "request_id": descriptor.request_id,
            "lease_epoch": descriptor.lease_epoch,
            "token": descriptor.token,
        }
        self._hello(channel, fields)

    @property
    def channel(self) -> ControlChannel:
        if self._channel is None:
            raise TransferError("sender is not open")
        return self._channel

    def begin(self, name: str, src: torch.Tensor) -> dict[str, object]:
        """Ask the receiver to take tensor `name`; its grant, or its refusal raised."""
        header = {
            "phase": "begin",
            "name": name,
            "shape": list(src.shape),
            "dtype": dtype_name(src.dtype),
        }
        return self.channel.request(Kind.TENSOR, header)

    def prepare(
        self, name: str, tensor: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, TensorSpec]:
        """The contiguous source on `device` and its spec, with the checksum of the true bytes
        (the corruption hook flips a byte of a copy only after that)."""
        src = tensor.detach().to(device).contiguous()
        nbytes = src.numel() * src.element_size()
        spec = TensorSpec(name, tuple(src.shape), src.dtype, nbytes, device_checksum(src))
        if name == self._corrupt and nbytes:
            src = src.clone()
            src.view(-1).view(torch.uint8)[nbytes // 2 : nbytes // 2 + 1].bitwise_xor_(0xFF)
        return src, spec

    def record(self, spec: TensorSpec) -> None:
        """The tensor `spec` describes was handed over; the manifest will list it."""
        self._sent[spec.name] = spec

    def manifest(self, first_token: int) -> Manifest:
        d = self.channel.descriptor
        return Manifest(d.request_id, d.lease_epoch, tuple(self._sent.values()), first_token)

    def commit(self, manifest: Manifest) -> None:
        self.channel.request(Kind.COMMIT, {}, manifest.to_bytes())

    def abort(self) -> None:
        if self._channel is not None:
            self._channel.abort("sender aborted")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
