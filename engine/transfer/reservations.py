"""The receiver's reservation table with leases; backend-agnostic, no sockets here.

A reservation is PENDING until one of: COMMITTED (verified manifest), FAILED (the transfer broke:
a mismatch, a refused tensor, a sender abort or a lost connection), ABORTED (by the owner or
receiver shutdown), EXPIRED (its lease passed before commit). It stays in the table, counted by
`pending()`, until the owner collects it with wait_committed, aborts it, or its lease passes
while still uncommitted; the reaper thread then drops it and calls on_expired(request_id) so the
owner frees its pages and slot. A committed reservation is never expired: it waits for its owner.
Who frees: the owner frees a reservation's pages and slot in on_expired, or when wait_committed
raises anything but DeadlineExceeded (reservation still held) or LeaseExpired (raised exactly for
the reservations on_expired reports, also to a late caller), or after its own abort(). Making
that free idempotent (pop the request from the owner's own table) is still wise.

Writes into destinations happen only under the reservation's write lock and only while PENDING;
abort and expiry flip the state, wake the bound connection and take the write lock once, so when
they return (or on_expired runs) no write is in flight or can start.
"""

from __future__ import annotations

import enum
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from engine.transfer.base import (
    DeadlineExceeded,
    ExpectedTensor,
    ExpiredFn,
    LeaseExpired,
    StaleEpoch,
    TokenRejected,
    TransferAborted,
    TransferError,
)
from engine.transfer.framing import Deadline
from engine.transfer.manifest import Manifest
from engine.transfer.verify import verify_manifest

log = logging.getLogger(__name__)
_EXPIRED_MEMORY = 4096


class State(enum.Enum):
    PENDING = "pending"
    COMMITTED = "committed"
    FAILED = "failed"
    ABORTED = "aborted"
    EXPIRED = "expired"


class Reservation:
    def __init__(
        self, request_id: str, epoch: int, expected: Sequence[ExpectedTensor], lease_s: float
    ) -> None:
        self.request_id, self.epoch = request_id, epoch
        self.token = secrets.token_hex(16)
        self.expected = {e.name: e for e in expected}
        self.deadline = Deadline(lease_s)
        self.state = State.PENDING
        self.error: TransferError | None = None
        self.manifest: Manifest | None = None
        self.received: dict[str, str] = {}  # tensor name -> checksum of the bytes received
        self.token_used = False
        self.wake: Callable[[], None] | None = None  # stops the bound connection's I/O
        self.write_lock = threading.Lock()

    def error_copy(self) -> TransferError:
        err = self.error or TransferError(f"request {self.request_id!r}: {self.state.value}")
        return type(err)(str(err))


class ReservationTable:
    def __init__(self, on_expired: ExpiredFn) -> None:
        self._on_expired = on_expired
        self._cond = threading.Condition()
        self._live: dict[str, Reservation] = {}
        # Epochs grow across the table's life and across restarts (they start from the clock),
        # so any epoch below the newest one issued to a request id is stale.
        self._last_epoch = time.time_ns() // 1000
        self._closed = False
        self._expired: OrderedDict[str, int] = OrderedDict()  # recent drops, for late waiters
        self._reaper = threading.Thread(target=self._reap_loop, name="duet-lease-reaper")
        self._reaper.daemon = True
        self._reaper.start()

    def pending(self) -> int:
        with self._cond:
            return len(self._live)

    def reserve(
        self, request_id: str, expected: Sequence[ExpectedTensor], lease_s: float
    ) -> Reservation:
        names = [e.name for e in expected]
        if len(set(names)) != len(names):
            raise ValueError(f"request {request_id!r}: duplicate tensor names in {names}")
        if not lease_s > 0:
            raise ValueError(f"lease must be positive, got {lease_s}")
        with self._cond:
            if self._closed:
                raise TransferAborted("receiver is closed")
            if request_id in self._live:
                raise ValueError(f"request {request_id!r} is already reserved; abort it first")
            self._last_epoch += 1
            self._expired.pop(request_id, None)
            res = Reservation(request_id, self._last_epoch, expected, lease_s)
            self._live[request_id] = res
            self._cond.notify_all()
            return res

    def bind(
        self, request_id: str, epoch: int, token: str, wake: Callable[[], None]
    ) -> Reservation:
        """Attach a sender's connection to a reservation; the token works once."""
        with self._cond:
            res = self._live.get(request_id)
            if epoch > self._last_epoch:
                raise TransferError(f"request {request_id!r}: epoch {epoch} was never issued")
            if res is None or epoch < res.epoch:
                raise StaleEpoch(
                    f"request {request_id!r}: epoch {epoch} is not current "
                    "(its reservation was aborted, expired, collected or replaced)"
                )
            if epoch != res.epoch or not hmac.compare_digest(token, res.token):
                raise TokenRejected(f"request {request_id!r}: wrong token")
            if res.state is not State.PENDING:
                raise StaleEpoch(f"request {request_id!r}: epoch {epoch} is {res.state.value}")
            if res.token_used:
                raise TokenRejected(f"request {request_id!r}: token already used")
            res.token_used, res.wake = True, wake
            return res

    def unbind(self, res: Reservation) -> None:
        """The connection ended; a transfer that had not committed can never commit now."""
        with self._cond:
            res.wake = None
        self.fail(res, TransferError(f"request {res.request_id!r}: sender connection lost"))

    def is_pending(self, res: Reservation) -> bool:
        with self._cond:
            return res.state is State.PENDING

    @contextmanager
    def writing(self, res: Reservation) -> Iterator[bool]:
        """Hold the write lock; yields whether writing into the destinations is allowed."""
        with res.write_lock:
            yield self.is_pending(res)

    def check_tensor(
        self, res: Reservation, name: str, shape: tuple[int, ...], dtype: torch.dtype, nbytes: int
    ) -> ExpectedTensor:
        """The expected tensor for an arriving frame, or TransferError."""
        exp = res.expected.get(name)
        if exp is None:
            raise TransferError(f"request {res.request_id!r}: unexpected tensor {name!r}")
        if name in res.received:
            raise TransferError(f"request {res.request_id!r}: tensor {name!r} sent twice")
        if (shape, dtype, nbytes) != (exp.shape, exp.dtype, exp.nbytes):
            raise TransferError(
                f"request {res.request_id!r}: tensor {name!r} is {shape} {dtype} {nbytes} B, "
                f"reserved {exp.shape} {exp.dtype} {exp.nbytes} B"
            )
        return exp

    def record_received(self, res: Reservation, name: str, checksum: str) -> None:
        with self._cond:
            res.received[name] = checksum

    def fail(self, res: Reservation, error: TransferError) -> None:
        with self._cond:
            if res.state is State.PENDING:
                res.state, res.error = State.FAILED, error
                self._cond.notify_all()

    def commit(self, res: Reservation, manifest: Manifest) -> None:
        """Verify and commit, or raise; a failed verification fails the reservation."""
        with self._cond:
            if res.state is State.COMMITTED:
                raise StaleEpoch(f"request {res.request_id!r}: epoch {res.epoch} already committed")
            if res.state is not State.PENDING:
                raise res.error_copy()
            error = verify_manifest(res.request_id, res.epoch, res.expected, res.received, manifest)
            if error is not None:
                res.state, res.error = State.FAILED, error
            else:
                res.state, res.manifest = State.COMMITTED, manifest
            self._cond.notify_all()
        if error is not None:
            raise type(error)(str(error))

    def wait_committed(self, request_id: str, timeout: float) -> Manifest:
        deadline = Deadline(timeout)
        with self._cond:
            res = self._live.get(request_id)
            if res is None and request_id in self._expired:
                raise LeaseExpired(f"request {request_id!r}: lease expired before commit")
            if res is None:
                raise TransferError(
                    f"request {request_id!r} has no reservation (never reserved, "
                    "or already collected, aborted or expired)"
                )
            while res.state is State.PENDING:
                if deadline.expired():
                    raise DeadlineExceeded(f"request {request_id!r}: no commit within {timeout}s")
                self._cond.wait(deadline.timeout())
            if self._live.get(request_id) is res:
                del self._live[request_id]
        if res.state is State.COMMITTED and res.manifest is not None:
            return res.manifest
        self._quiesce(res, wake=False)
        raise res.error_copy()

    def abort(self, request_id: str) -> bool:
        """Drop a reservation; False if there was none. No write is in flight on return."""
        with self._cond:
            res = self._live.pop(request_id, None)
            if res is None:
                return False
            self._finish(res, State.ABORTED, TransferAborted(f"request {request_id!r}: aborted"))
        self._quiesce(res, wake=True)
        return True

    def close(self) -> None:
        """Abort every reservation (no on_expired) and stop the reaper."""
        with self._cond:
            self._closed = True
            dropped = list(self._live.values())
            self._live.clear()
            for res in dropped:
                self._finish(res, State.ABORTED, TransferAborted("receiver closed"))
            self._cond.notify_all()
        for res in dropped:
            self._quiesce(res, wake=True)
        self._reaper.join(timeout=5.0)

    def _finish(self, res: Reservation, state: State, error: TransferError) -> None:
        """Called with the lock held: end a reservation that is leaving the table."""
        if res.state in (State.PENDING, State.COMMITTED):
            res.state, res.error = state, error
        self._cond.notify_all()

    def _quiesce(self, res: Reservation, wake: bool) -> None:
        """Make sure nothing writes into res's destinations any more."""
        with self._cond:
            stop = res.wake if wake else None
        if stop is not None:
            stop()
        with res.write_lock:
            pass

    def _reap_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                due = self._pop_due()
                if not due:
                    self._cond.wait(self._seconds_to_next_deadline())
                    continue
            for res in due:
                self._quiesce(res, wake=True)
                try:
                    self._on_expired(res.request_id)
                except Exception:
                    log.exception("on_expired(%r) failed", res.request_id)

    def _pop_due(self) -> list[Reservation]:
        due = [
            r
            for r in self._live.values()
            if r.state is not State.COMMITTED and r.deadline.expired()
        ]
        for res in due:
            del self._live[res.request_id]
            why = f" ({res.error})" if res.error is not None else ""
            res.state = State.EXPIRED
            res.error = LeaseExpired(f"request {res.request_id!r}: lease expired{why}")
            self._expired[res.request_id] = res.epoch
            while len(self._expired) > _EXPIRED_MEMORY:
                self._expired.popitem(last=False)
        if due:
            self._cond.notify_all()  # waiters blocked in wait_committed
        return due

    def _seconds_to_next_deadline(self) -> float:
        deadlines = [
            r.deadline.remaining() for r in self._live.values() if r.state is not State.COMMITTED
        ]
        return max(0.0, min([1.0, *deadlines]))
