"""The receiver side of the device backends' control channel (shared by cuda_ipc and nccl).

Only the bulk bytes move device to device; everything else is the tcp backend's machinery:
the same frames (framing.py), the same ReservationTable (leases, epochs, one-time tokens,
expiry, verify-before-commit), one connection per transfer. The conversation:

  HELLO {request_id, lease_epoch, token, backend, ...backend fields}  ->  OK {...} | ERROR
  per tensor:  TENSOR {phase: "begin", name, shape, dtype}  ->  OK {grant} | ERROR
               (the bytes move: cuda_ipc copy / inline data, or an NCCL send/recv)
  COMMIT (payload: manifest)  ->  OK | ERROR;      ABORT {reason} (not answered)

Every TENSOR begin is answered, so a refusal reaches the sender before it moves anything. A
grant is served while holding the reservation's write lock and the connection's grant flag:
abort() and lease expiry wake the connection, but never in the middle of a grant, so when they
return the granted bytes have landed (or the GPU operation was cancelled) and nothing else will.
The receiver checksums each tensor on its own device once its bytes are in the destination.
"""

from __future__ import annotations

import logging
import math
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from engine.transfer.base import (
    DestinationFn,
    ExpectedTensor,
    ExpiredFn,
    TransferAborted,
    TransferDescriptor,
    TransferError,
    TransferReceiver,
)
from engine.transfer.cuda_ipc_grants import Connection
from engine.transfer.cuda_ipc_segments import device_segments
from engine.transfer.framing import (
    FrameError,
    Kind,
    read_frame_head,
    read_small_payload,
    shutdown_quietly,
)
from engine.transfer.manifest import Manifest, dtype_from_name
from engine.transfer.reservations import Reservation, ReservationTable

log = logging.getLogger(__name__)
Reply = Callable[[dict[str, object]], None]


class DeviceReceiverBase(TransferReceiver):
    """Serves one device backend on (host, port). Subclasses set `backend` and implement
    `_greet` (answer a bound HELLO) and `_receive` (move one granted tensor's bytes)."""

    backend: ClassVar[str] = ""

    def __init__(
        self,
        destination: DestinationFn,
        on_expired: ExpiredFn,
        device: torch.device,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        handshake_timeout_s: float = 5.0,
        idle_timeout_s: float = 10.0,
    ) -> None:
        self.device = device
        self.instance = secrets.token_hex(8)  # a restarted receiver is a new instance
        self._destination = destination
        self._table = ReservationTable(on_expired)
        self._handshake_timeout_s, self._idle_timeout_s = handshake_timeout_s, idle_timeout_s
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.25)
        self.host = advertise_host or host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._closing = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"duet-{self.backend}-accept", daemon=True
        )
        self._acceptor.start()

    def _greet(self, conn: Connection, header: dict[str, object], reply: Reply) -> None:
        raise NotImplementedError

    def _receive(
        self,
        conn: Connection,
        res: Reservation,
        expected: ExpectedTensor,
        segments: list[torch.Tensor],
    ) -> str:
        """Grant and receive one tensor into `segments`; its device checksum once landed.
        TransferError refuses or fails the transfer (the sender is told)."""
        raise NotImplementedError

    # -- the owner's side -------------------------------------------------------------------

    def reserve(
        self, request_id: str, expected: Sequence[ExpectedTensor], deadline_s: float
    ) -> TransferDescriptor:
        res = self._table.reserve(request_id, expected, deadline_s)
        return TransferDescriptor(
            self.backend, self.host, self.port, request_id, res.epoch, res.token
        )

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
        shutdown_quietly(self._listener)
        self._acceptor.join(timeout=5.0)
        self._listener.close()
        self._table.close()
        with self._lock:
            conns = dict(self._conns)
        for sock, thread in conns.items():
            shutdown_quietly(sock)
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("%s connection thread %s did not stop", self.backend, thread.name)

    def __enter__(self) -> DeviceReceiverBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(sock,), name=f"duet-{self.backend}-conn", daemon=True
            )
            with self._lock:
                if self._closing.is_set():
                    sock.close()
                    return
                self._conns[sock] = thread
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn, res = Connection(sock), None
        try:
            sock.settimeout(self._handshake_timeout_s)
            res = self._handshake(conn)
            if res is not None:
                self._serve_bound(conn, res)
        except (OSError, FrameError) as e:
            log.debug("%s connection ended: %r", self.backend, e)
        finally:
            if res is not None:
                self._table.unbind(res)
            sock.close()
            with self._lock:
                self._conns.pop(sock, None)

    def _handshake(self, conn: Connection) -> Reservation | None:
        kind, header, payload_len = read_frame_head(conn.sock)
        if kind is not Kind.HELLO or payload_len:
            raise FrameError(f"expected HELLO, got {kind.name} with {payload_len} B")
        if header.get("backend") != self.backend:
            conn.error(
                TransferError(f"this receiver serves {self.backend}, not {header.get('backend')!r}")
            )
            return None
        try:
            res = self._table.bind(
                str(header["request_id"]),
                int(header["lease_epoch"]),  # type: ignore[call-overload]
                str(header["token"]),
                wake=conn.wake,
            )
        except (KeyError, TypeError, ValueError):
            conn.error(TransferError("malformed HELLO"))
            return None
        except TransferError as e:
            conn.error(e)
            return None
        try:
            self._greet(conn, header, conn.ok)
        except OSError:
            raise
        except Exception as e:  # the backend's setup failed: this transfer cannot happen
            err = e if isinstance(e, TransferError) else TransferError(f"{self.backend}: {e!r}")
            self._table.fail(res, err)
            conn.error(err)
        return res

    def _serve_bound(self, conn: Connection, res: Reservation) -> None:
        while True:
            pending = self._table.is_pending(res)
            conn.sock.settimeout(res.deadline.timeout() + 0.5 if pending else self._idle_timeout_s)
            kind, header, payload_len = read_frame_head(conn.sock)
            if kind is Kind.TENSOR and header.get("phase") == "begin" and not payload_len:
                self._on_tensor(conn, res, header)
            elif kind is Kind.COMMIT:
                self._on_commit(conn, res, read_small_payload(conn.sock, payload_len))
            elif kind is Kind.ABORT:
                self._table.fail(
                    res, TransferAborted(f"sender aborted: {header.get('reason', '')}")
                )
                return
            else:
                raise FrameError(f"unexpected {kind.name} frame {header!r}")

    def _on_tensor(self, conn: Connection, res: Reservation, header: dict[str, object]) -> None:
        if not self._table.is_pending(res):  # already refused, aborted or expired
            conn.error(res.error_copy())
            return
        try:
            expected, segments = self._check_tensor(res, header)
            with self._table.writing(res) as allowed, conn.granted():
                if not allowed:
                    raise res.error_copy()
                checksum = self._receive(conn, res, expected, segments)
        except (OSError, FrameError):
            raise
        except Exception as e:  # TransferError, or a device error while receiving
            err = e if isinstance(e, TransferError) else TransferError(f"{header!r}: {e!r}")
            self._table.fail(res, err)
            conn.error(err)
            return
        self._table.record_received(res, expected.name, checksum)

    def _check_tensor(
        self, res: Reservation, header: dict[str, object]
    ) -> tuple[ExpectedTensor, list[torch.Tensor]]:
        try:
            shape = header["shape"]
            if not isinstance(shape, list) or not all(isinstance(x, int) for x in shape):
                raise ValueError(f"bad shape {shape!r}")
            name, dtype = str(header["name"]), dtype_from_name(str(header["dtype"]))
        except (KeyError, ValueError) as e:
            raise TransferError(f"malformed TENSOR header {header!r}: {e}") from e
        nbytes = math.prod(shape) * dtype.itemsize
        expected = self._table.check_tensor(res, name, tuple(shape), dtype, nbytes)
        try:
            dest = self._destination(res.request_id, name)
        except Exception as e:  # the owner's callback failed
            raise TransferError(
                f"request {res.request_id!r}: destination for {name!r}: {e!r}"
            ) from e
        return expected, device_segments(dest, expected, self.device)

    def _on_commit(self, conn: Connection, res: Reservation, payload: bytes) -> None:
        try:
            manifest = Manifest.from_bytes(payload)
        except ValueError as e:
            err = TransferError(f"request {res.request_id!r}: {e}")
            self._table.fail(res, err)
            conn.error(err)
            return
        try:
            self._table.commit(res, manifest)
        except TransferError as e:
            conn.error(e)
            return
        conn.ok({})
