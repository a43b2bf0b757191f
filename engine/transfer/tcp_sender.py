"""The tcp backend's sender: one connection per transfer, every call under the open() deadline.

Test hook (off by default): `TcpSender(corrupt_tensor=NAME)`, or the environment variable
DUET_TRANSFER_TEST_CORRUPT=NAME in the sending process, flips one byte (the middle one) of the
tensor NAME on the wire after its checksum was taken, so the receiver must catch it. Only for
tests that prove corruption detection end to end, including across real worker processes.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from engine.transfer.base import (
    DeadlineExceeded,
    TransferDescriptor,
    TransferError,
    TransferSender,
    error_from_kind,
)
from engine.transfer.framing import (
    Deadline,
    FrameError,
    Kind,
    discard,
    read_frame_head,
    write_frame,
    write_frame_head,
)
from engine.transfer.manifest import (
    Manifest,
    TensorSpec,
    byte_view,
    checksum_bytes,
    dtype_name,
)

CORRUPT_ENV = "DUET_TRANSFER_TEST_CORRUPT"
_ABORT_GRACE_S = 0.5


class TcpSender(TransferSender):
    def __init__(self, corrupt_tensor: str | None = None) -> None:
        self._corrupt = corrupt_tensor or os.environ.get(CORRUPT_ENV) or None
        self._sock: socket.socket | None = None
        self._descriptor: TransferDescriptor | None = None
        self._deadline = Deadline(0.0)
        self._sent: dict[str, TensorSpec] = {}

    def open(self, descriptor: TransferDescriptor, deadline_s: float) -> None:
        if descriptor.backend != "tcp":
            raise ValueError(f"TcpSender cannot use a {descriptor.backend!r} descriptor")
        if self._descriptor is not None:
            raise TransferError("this sender was already opened; use one sender per transfer")
        self._descriptor, self._deadline = descriptor, Deadline(deadline_s)
        address = (descriptor.host, descriptor.port)
        try:
            sock = socket.create_connection(address, timeout=self._deadline.timeout())
        except TimeoutError as e:
            raise DeadlineExceeded(f"connect to {address}: no answer within {deadline_s}s") from e
        except OSError as e:
            raise TransferError(f"connect to {address}: {e}") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        hello = {
            "request_id": descriptor.request_id,
            "lease_epoch": descriptor.lease_epoch,
            "token": descriptor.token,
        }
        with self._io("handshake") as s:
            write_frame(s, Kind.HELLO, hello)
            _read_reply(s)

    def send(self, name: str, tensor: torch.Tensor) -> None:
        src = tensor.detach().to("cpu").contiguous()
        view = byte_view(src)
        spec = TensorSpec(name, tuple(src.shape), src.dtype, len(view), checksum_bytes(view))
        header = {"name": name, "shape": list(spec.shape), "dtype": dtype_name(src.dtype)}
        with self._io(f"send {name!r}") as s:
            self._raise_if_refused(s)
            write_frame_head(s, Kind.TENSOR, header, len(view))
            if name == self._corrupt and len(view):
                middle = len(view) // 2
                s.sendall(view[:middle])
                s.sendall(bytes([view[middle] ^ 0xFF]))
                s.sendall(view[middle + 1 :])
            else:
                s.sendall(view)
        self._sent[name] = spec

    def manifest(self, first_token: int) -> Manifest:
        if self._descriptor is None:
            raise TransferError("sender is not open")
        d = self._descriptor
        return Manifest(d.request_id, d.lease_epoch, tuple(self._sent.values()), first_token)

    def commit(self, manifest: Manifest) -> None:
        with self._io("commit") as s:
            write_frame(s, Kind.COMMIT, {}, manifest.to_bytes())
            _read_reply(s)

    def abort(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(min(_ABORT_GRACE_S, self._deadline.timeout()))
            write_frame(sock, Kind.ABORT, {"reason": "sender aborted"})
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
        """Run socket calls under the deadline; any failure closes the connection."""
        if self._sock is None:
            raise TransferError(f"{what}: sender is not open (never opened, failed or closed)")
        if self._deadline.expired():
            self.close()
            raise DeadlineExceeded(f"{what}: the transfer deadline has passed")
        self._sock.settimeout(self._deadline.timeout())
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

    @staticmethod
    def _raise_if_refused(sock: socket.socket) -> None:
        """The receiver only speaks first to refuse; read that refusal before sending more."""
        poller = select.poll()  # not select.select: it fails on descriptors above 1023
        poller.register(sock, select.POLLIN)
        if poller.poll(0):
            _read_reply(sock)
            raise TransferError("receiver sent an unexpected OK")


def _read_reply(sock: socket.socket) -> None:
    """Return on OK; raise the receiver's error on ERROR; FrameError on anything else."""
    kind, header, payload_len = read_frame_head(sock)
    if payload_len:
        discard(sock, payload_len)
    if kind is Kind.ERROR:
        raise error_from_kind(str(header.get("kind")), str(header.get("message")))
    if kind is not Kind.OK:
        raise FrameError(f"expected OK or ERROR, got {kind.name}")
