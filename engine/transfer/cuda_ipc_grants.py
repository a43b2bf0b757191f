"""A device receiver's view of one sender connection: the socket, the grant state that keeps
abort and expiry from cutting a transfer off in the middle of a write, and the peer (for nccl,
the pair's communicator) the HELLO bound it to."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.transfer.base import TransferError, error_kind
from engine.transfer.framing import Kind, shutdown_quietly, write_frame

log = logging.getLogger(__name__)


class Connection:
    """One sender's control connection, with its grant state and backend-specific peer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer: object = None
        self._lock = threading.Lock()
        self._granted = False
        self._stop_after_grant = False

    def wake(self) -> None:
        """Stop this connection (abort or expiry), but not in the middle of a grant: the
        sender may be writing right now, and the grant's end stops it instead."""
        with self._lock:
            if self._granted:
                self._stop_after_grant = True
                return
        shutdown_quietly(self.sock)

    @contextmanager
    def granted(self) -> Iterator[None]:
        with self._lock:
            self._granted = True
        try:
            yield
        finally:
            with self._lock:
                self._granted, stop = False, self._stop_after_grant
            if stop:
                shutdown_quietly(self.sock)

    def ok(self, fields: dict[str, object]) -> None:
        write_frame(self.sock, Kind.OK, fields)

    def error(self, error: TransferError) -> None:
        """Best effort: the peer may already be gone."""
        try:
            write_frame(self.sock, Kind.ERROR, {"kind": error_kind(error), "message": str(error)})
        except OSError as e:
            log.debug("could not send %s: %r", error_kind(error), e)
