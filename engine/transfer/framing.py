"""Framed binary messages over a stream socket, every read and write under a deadline.

A frame is a fixed 17-byte prefix `!4sBIQ` (magic, kind, header length, payload length), then
a small UTF-8 JSON header, then `payload length` raw bytes. No pickle: a peer can at worst send
bytes that fail validation. The payload is read by the caller (straight into its destination),
so this module never buffers tensor bytes.
"""

from __future__ import annotations

import contextlib
import enum
import json
import socket
import struct
import time
from collections.abc import Callable

MAGIC = b"DUT1"
_PREFIX = struct.Struct("!4sBIQ")
MAX_HEADER_BYTES = 1 << 20
MAX_SMALL_PAYLOAD = 64 << 20  # manifests and other payloads read into memory, not tensors
_CHUNK = 4 << 20


class Kind(enum.IntEnum):
    HELLO = 1  # sender -> receiver: request_id, lease_epoch, token; answered OK or ERROR
    TENSOR = 2  # sender -> receiver: name, shape, dtype + raw bytes; not answered
    COMMIT = 3  # sender -> receiver: payload is Manifest.to_bytes(); answered OK or ERROR
    ABORT = 4  # sender -> receiver: reason; not answered
    OK = 5  # receiver -> sender
    ERROR = 6  # receiver -> sender: kind (an exception class name), message


class FrameError(ConnectionError):
    """The peer sent something that is not a valid frame, or closed mid-frame."""


class PeerClosed(FrameError):
    """The peer closed the connection (EOF)."""


class Deadline:
    """An absolute point on the monotonic clock; `timeout()` is what a socket call may wait."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, cap: float | None = None) -> float:
        """Seconds left (at least 1 ms so a socket never turns blocking), at most `cap`."""
        left = max(self.remaining(), 0.001)
        return left if cap is None else min(left, cap)


def write_frame(
    sock: socket.socket, kind: Kind, header: dict[str, object], payload: bytes = b""
) -> None:
    write_frame_head(sock, kind, header, len(payload))
    if payload:
        sock.sendall(payload)


def write_frame_head(
    sock: socket.socket, kind: Kind, header: dict[str, object], payload_len: int
) -> None:
    """Prefix and header; the caller sends exactly `payload_len` bytes after it."""
    head = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_PREFIX.pack(MAGIC, int(kind), len(head), payload_len) + head)


def read_frame_head(sock: socket.socket) -> tuple[Kind, dict[str, object], int]:
    """(kind, header, payload length); PeerClosed on a clean EOF before the frame starts."""
    prefix = bytearray(_PREFIX.size)
    recv_exact_into(sock, memoryview(prefix), eof_ok=True)
    magic, kind, head_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}")
    if head_len > MAX_HEADER_BYTES:
        raise FrameError(f"header of {head_len} bytes is too large")
    try:
        frame_kind = Kind(kind)
        head = bytearray(head_len)
        recv_exact_into(sock, memoryview(head))
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise FrameError(f"bad frame header: {e}") from e
    if not isinstance(header, dict):
        raise FrameError("frame header is not an object")
    return frame_kind, header, payload_len


def read_small_payload(sock: socket.socket, payload_len: int) -> bytes:
    if payload_len > MAX_SMALL_PAYLOAD:
        raise FrameError(f"payload of {payload_len} bytes is too large")
    buf = bytearray(payload_len)
    recv_exact_into(sock, memoryview(buf))
    return bytes(buf)


def recv_exact_into(
    sock: socket.socket,
    view: memoryview,
    on_bytes: Callable[[memoryview], None] | None = None,
    eof_ok: bool = False,
) -> None:
    """Fill `view` from the socket; `on_bytes` sees each piece as it lands (for checksums).

    PeerClosed on EOF (only before the first byte when eof_ok), socket.timeout per the
    socket's timeout, OSError on a reset.
    """
    got, total = 0, len(view)
    while got < total:
        n = sock.recv_into(view[got:], min(total - got, _CHUNK))
        if n == 0:
            if eof_ok and got == 0:
                raise PeerClosed("peer closed the connection")
            raise FrameError(f"peer closed the connection after {got} of {total} bytes")
        if on_bytes is not None:
            on_bytes(view[got : got + n])
        got += n


def discard(sock: socket.socket, nbytes: int) -> None:
    """Read and drop `nbytes` (the payload of a frame that was refused)."""
    scratch = memoryview(bytearray(min(nbytes, _CHUNK)))
    while nbytes > 0:
        piece = min(nbytes, len(scratch))
        recv_exact_into(sock, scratch[:piece])
        nbytes -= piece


def shutdown_quietly(sock: socket.socket) -> None:
    """Wake any thread blocked on this socket (it sees EOF); the owner thread closes the fd."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
