"""The tcp backend: a receiver server on threads (here) and `TcpSender` (tcp_sender.py).

One connection per transfer. The sender presents HELLO(request id, lease epoch, one-time token),
streams TENSOR frames whose bytes are received straight into the owner's destination (a
non-contiguous destination segment goes through one reusable staging buffer, then one copy),
and finishes with COMMIT(manifest), answered OK or ERROR. A refused tensor is answered with an
ERROR frame at once (the sender sees it before its next send) and its bytes are discarded.
Every socket call runs under a timeout: the lease while pending, `idle_timeout_s` otherwise.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence

import torch

from engine.transfer.base import (
    DestinationFn,
    ExpectedTensor,
    ExpiredFn,
    TransferAborted,
    TransferDescriptor,
    TransferError,
    TransferReceiver,
    error_kind,
)
from engine.transfer.destinations import as_segments
from engine.transfer.framing import (
    FrameError,
    Kind,
    discard,
    read_frame_head,
    read_small_payload,
    recv_exact_into,
    shutdown_quietly,
    write_frame,
)
from engine.transfer.manifest import Checksum, Manifest, byte_view, dtype_from_name
from engine.transfer.reservations import Reservation, ReservationTable
from engine.transfer.tcp_sender import CORRUPT_ENV, TcpSender

__all__ = ["CORRUPT_ENV", "TcpReceiver", "TcpSender"]

log = logging.getLogger(__name__)
BACKEND = "tcp"


class TcpReceiver(TransferReceiver):
    """Serves transfers on (host, port); port 0 picks a free one (see `.port`). Bind 0.0.0.0
    and pass `advertise_host` (e.g. the pod IP) for senders on other machines. Callbacks run on
    the receiver's threads and must not block for long: `destination` on a connection thread,
    `on_expired` on the lease reaper."""

    def __init__(
        self,
        destination: DestinationFn,
        on_expired: ExpiredFn,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        handshake_timeout_s: float = 5.0,
        idle_timeout_s: float = 10.0,
    ) -> None:
        self._destination = destination
        self._table = ReservationTable(on_expired)
        self._handshake_timeout_s, self._idle_timeout_s = handshake_timeout_s, idle_timeout_s
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.25)  # the accept loop notices close() within this
        self.host = advertise_host or host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._closing = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="duet-tcp-accept")
        self._acceptor.daemon = True
        self._acceptor.start()

    # -- the owner's side -------------------------------------------------------------------

    def reserve(
        self, request_id: str, expected: Sequence[ExpectedTensor], deadline_s: float
    ) -> TransferDescriptor:
        res = self._table.reserve(request_id, expected, deadline_s)
        return TransferDescriptor(BACKEND, self.host, self.port, request_id, res.epoch, res.token)

    def wait_committed(self, request_id: str, timeout: float) -> Manifest:
        return self._table.wait_committed(request_id, timeout)

    def abort(self, request_id: str) -> None:
        self._table.abort(request_id)

    def pending(self) -> int:
        return self._table.pending()

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        self._closing.set()
        shutdown_quietly(self._listener)  # wakes a blocked accept() at once
        self._acceptor.join(timeout=5.0)
        self._listener.close()
        self._table.close()
        with self._lock:
            conns = dict(self._conns)
        for conn, thread in conns.items():
            shutdown_quietly(conn)
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("transfer connection thread %s did not stop", thread.name)

    def __enter__(self) -> TcpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn,), name="duet-tcp-conn")
            thread.daemon = True
            with self._lock:
                if self._closing.is_set():
                    conn.close()
                    return
                self._conns[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        res: Reservation | None = None
        try:
            conn.settimeout(self._handshake_timeout_s)
            res = self._handshake(conn)
            if res is not None:
                self._serve_bound(conn, res)
        except (OSError, FrameError) as e:  # includes timeouts and the peer dying
            log.debug("transfer connection ended: %r", e)
        finally:
            if res is not None:
                self._table.unbind(res)
            conn.close()
            with self._lock:
                self._conns.pop(conn, None)

    def _handshake(self, conn: socket.socket) -> Reservation | None:
        kind, header, payload_len = read_frame_head(conn)
        if kind is not Kind.HELLO or payload_len:
            raise FrameError(f"expected HELLO, got {kind.name} with {payload_len} B")
        try:
            res = self._table.bind(
                str(header["request_id"]),
                int(header["lease_epoch"]),  # type: ignore[call-overload]
                str(header["token"]),
                wake=lambda: shutdown_quietly(conn),
            )
        except (KeyError, TypeError, ValueError):
            _send_error(conn, TransferError("malformed HELLO"))
            return None
        except TransferError as e:
            _send_error(conn, e)
            return None
        write_frame(conn, Kind.OK, {})
        return res

    def _serve_bound(self, conn: socket.socket, res: Reservation) -> None:
        staging = bytearray()
        while True:
            pending = self._table.is_pending(res)
            conn.settimeout(res.deadline.timeout() + 0.5 if pending else self._idle_timeout_s)
            kind, header, payload_len = read_frame_head(conn)
            if kind is Kind.TENSOR:
                staging = self._on_tensor(conn, res, header, payload_len, staging)
            elif kind is Kind.COMMIT:
                self._on_commit(conn, res, read_small_payload(conn, payload_len))
            elif kind is Kind.ABORT:
                reason = str(header.get("reason", ""))
                self._table.fail(res, TransferAborted(f"sender aborted: {reason}"))
                return
            else:
                raise FrameError(f"unexpected {kind.name} frame")

    def _on_tensor(
        self,
        conn: socket.socket,
        res: Reservation,
        header: dict[str, object],
        payload_len: int,
        staging: bytearray,
    ) -> bytearray:
        if not self._table.is_pending(res):  # already refused: the sender is told, drop bytes
            discard(conn, payload_len)
            return staging
        try:
            name, shape, dtype = _tensor_header(header)
            expected = self._table.check_tensor(res, name, shape, dtype, payload_len)
            segments = as_segments(self._destination(res.request_id, name), expected)
        except TransferError as e:
            self._table.fail(res, e)
            _send_error(conn, e)
            discard(conn, payload_len)
            return staging
        except Exception as e:  # the owner's callback failed
            err = TransferError(f"request {res.request_id!r}: destination for {header!r}: {e!r}")
            self._table.fail(res, err)
            _send_error(conn, err)
            discard(conn, payload_len)
            return staging
        checksum = Checksum()
        with self._table.writing(res) as allowed:
            if not allowed:
                discard(conn, payload_len)
                return staging
            for seg in segments:
                staging = _recv_segment(conn, seg, checksum, staging)
        self._table.record_received(res, name, checksum.hexdigest())
        return staging

    def _on_commit(self, conn: socket.socket, res: Reservation, payload: bytes) -> None:
        try:
            manifest = Manifest.from_bytes(payload)
        except ValueError as e:
            err = TransferError(f"request {res.request_id!r}: {e}")
            self._table.fail(res, err)
            _send_error(conn, err)
            return
        try:
            self._table.commit(res, manifest)
        except TransferError as e:
            _send_error(conn, e)
            return
        write_frame(conn, Kind.OK, {})


def _tensor_header(header: dict[str, object]) -> tuple[str, tuple[int, ...], torch.dtype]:
    try:
        shape = header["shape"]
        if not isinstance(shape, list) or not all(isinstance(x, int) for x in shape):
            raise ValueError(f"bad shape {shape!r}")
        return str(header["name"]), tuple(shape), dtype_from_name(str(header["dtype"]))
    except (KeyError, ValueError) as e:
        raise TransferError(f"malformed TENSOR header {header!r}: {e}") from e


def _recv_segment(
    conn: socket.socket, seg: torch.Tensor, checksum: Checksum, staging: bytearray
) -> bytearray:
    """Receive seg's bytes: straight into it when contiguous, else via the staging buffer."""
    if seg.is_contiguous():
        recv_exact_into(conn, byte_view(seg), checksum.update)
        return staging
    nbytes = seg.numel() * seg.element_size()
    if len(staging) < nbytes:
        staging = bytearray(nbytes)
    view = memoryview(staging)[:nbytes]
    recv_exact_into(conn, view, checksum.update)
    if nbytes:
        seg.copy_(torch.frombuffer(view, dtype=seg.dtype).view(seg.shape))
    return staging


def _send_error(conn: socket.socket, error: TransferError) -> None:
    """Best effort: the peer may already be gone."""
    try:
        write_frame(conn, Kind.ERROR, {"kind": error_kind(error), "message": str(error)})
    except OSError as e:
        log.debug("could not send %s: %r", error_kind(error), e)
