"""The tcp transfer backend when things go wrong: dead peers, leases, deadlines, aborts.

Peers that die are real processes killed with SIGKILL (fork start method: fast, and the child
only touches sockets and tensors made before the fork).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue as MpQueue
from multiprocessing.synchronize import Event as MpEvent

import pytest
import torch

from engine.transfer.base import (
    DeadlineExceeded,
    ExpectedTensor,
    LeaseExpired,
    TransferDescriptor,
    TransferError,
)
from engine.transfer.framing import Kind, read_frame_head, write_frame, write_frame_head
from engine.transfer.tcp import TcpReceiver, TcpSender

LEASE_S = 0.6
SLACK_S = 0.4  # how late past its deadline a lease may be noticed on a busy 2-core machine
EXPECTED = [ExpectedTensor(f"state.{i}", (4, 64, 64), torch.float32) for i in range(3)]
FORK = mp.get_context("fork")


class Owner:
    """The decode side's bookkeeping: destinations, and when on_expired fired."""

    def __init__(self) -> None:
        self.slot = torch.zeros(len(EXPECTED), 4, 64, 64)
        self.expired: list[tuple[str, float]] = []
        self.expired_event = threading.Event()

    def destination(self, request_id: str, name: str) -> torch.Tensor:
        return self.slot[int(name.split(".")[1])]

    def on_expired(self, request_id: str) -> None:
        self.expired.append((request_id, time.monotonic()))
        self.expired_event.set()


@pytest.fixture
def owner() -> Owner:
    return Owner()


@pytest.fixture
def receiver(owner: Owner) -> Iterator[TcpReceiver]:
    rx = TcpReceiver(owner.destination, owner.on_expired)
    yield rx
    left_behind = rx.pending()
    rx.close()
    assert left_behind == 0, "a reservation was left in the receiver's table"
    assert rx.connections() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("duet-") and t.is_alive()]


def tensors() -> dict[str, torch.Tensor]:
    return {e.name: torch.full(e.shape, float(i + 1)) for i, e in enumerate(EXPECTED)}


def _sender_that_hangs(
    desc: TransferDescriptor, src: dict[str, torch.Tensor], sent: MpEvent
) -> None:
    tx = TcpSender()
    tx.open(desc, 30.0)
    tx.send("state.0", src["state.0"])
    sent.set()
    time.sleep(60)  # killed long before this ends


def test_sender_killed_mid_transfer_expires_within_the_lease(
    receiver: TcpReceiver, owner: Owner
) -> None:
    reserved_at = time.monotonic()
    desc = receiver.reserve("req", EXPECTED, LEASE_S)
    sent = FORK.Event()
    child = FORK.Process(target=_sender_that_hangs, args=(desc, tensors(), sent))
    child.start()
    try:
        assert sent.wait(10.0), "the child sender never sent its first layer"
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(5.0)
    assert owner.expired_event.wait(LEASE_S + SLACK_S + 2.0)
    ((request_id, fired_at),) = owner.expired
    assert request_id == "req"
    assert reserved_at + LEASE_S <= fired_at <= reserved_at + LEASE_S + SLACK_S
    assert receiver.pending() == 0
    with pytest.raises(LeaseExpired):  # a late waiter learns why, and frees nothing itself
        receiver.wait_committed("req", 0.1)


def test_sender_dying_mid_payload_fails_the_request_without_waiting(
    receiver: TcpReceiver, owner: Owner
) -> None:
    desc = receiver.reserve("req", EXPECTED, 10.0)
    sock = socket.create_connection((desc.host, desc.port), timeout=5.0)
    hello = {"request_id": "req", "lease_epoch": desc.lease_epoch, "token": desc.token}
    write_frame(sock, Kind.HELLO, hello)
    assert read_frame_head(sock)[0] is Kind.OK
    header = {"name": "state.1", "shape": [4, 64, 64], "dtype": "float32"}
    write_frame_head(sock, Kind.TENSOR, header, 4 * 64 * 64 * 4)
    sock.sendall(b"\x07" * 1000)  # a quarter of the payload, then a reset like a crash
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    start = time.monotonic()
    with pytest.raises(TransferError, match="connection lost"):
        receiver.wait_committed("req", 5.0)
    assert time.monotonic() - start < 2.0
    assert owner.expired == []


def _receiver_in_child(descs: MpQueue) -> None:
    rx = TcpReceiver(lambda rid, name: torch.empty(4, 64, 64), lambda rid: None)
    descs.put(rx.reserve("req", EXPECTED, 60.0).to_dict())
    time.sleep(60)


def test_receiver_killed_mid_transfer_sender_raises_within_deadline() -> None:
    descs = FORK.Queue()
    child = FORK.Process(target=_receiver_in_child, args=(descs,))
    child.start()
    try:
        desc = TransferDescriptor.from_dict(descs.get(timeout=10.0))
        tx, src = TcpSender(), tensors()
        tx.open(desc, 3.0)
        tx.send("state.0", src["state.0"])
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(5.0)
        start = time.monotonic()
        with pytest.raises(TransferError):
            tx.send("state.1", src["state.1"])
            tx.send("state.2", src["state.2"])
            tx.commit(tx.manifest(0))
        assert time.monotonic() - start < 3.0
    finally:
        child.kill()
        child.join(5.0)


def test_receiver_closed_mid_transfer_sender_raises_within_deadline(owner: Owner) -> None:
    rx = TcpReceiver(owner.destination, owner.on_expired)
    desc = rx.reserve("req", EXPECTED, 10.0)
    tx, src = TcpSender(), tensors()
    tx.open(desc, 3.0)
    tx.send("state.0", src["state.0"])
    start = time.monotonic()
    rx.close()
    assert rx.pending() == 0 and rx.connections() == 0
    with pytest.raises(TransferError):
        tx.send("state.1", src["state.1"])
        tx.send("state.2", src["state.2"])
        tx.commit(tx.manifest(0))
    assert time.monotonic() - start < 3.0
    assert owner.expired == []
    with pytest.raises(TransferError):
        rx.reserve("again", EXPECTED, 1.0)


def test_silent_receiver_hits_the_sender_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts in the kernel, never answers
        desc = TransferDescriptor("tcp", "127.0.0.1", server.getsockname()[1], "r", 1, "t")
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            TcpSender().open(desc, 0.3)
        assert 0.25 <= time.monotonic() - start < 1.5


def test_connect_refused_is_a_transfer_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(TransferError, match="connect"):
        TcpSender().open(TransferDescriptor("tcp", "127.0.0.1", port, "r", 1, "t"), 1.0)


def test_wait_timeout_leaves_the_reservation_then_lease_expires(
    receiver: TcpReceiver, owner: Owner
) -> None:
    receiver.reserve("req", EXPECTED, LEASE_S)
    with pytest.raises(DeadlineExceeded):
        receiver.wait_committed("req", 0.05)
    assert receiver.pending() == 1
    start = time.monotonic()
    with pytest.raises(LeaseExpired):  # a waiter blocked across the lease learns it expired
        receiver.wait_committed("req", LEASE_S + SLACK_S + 2.0)
    assert time.monotonic() - start <= LEASE_S + SLACK_S
    assert [rid for rid, _ in owner.expired] == ["req"]


def test_abort_while_a_tensor_is_being_placed_blocks_its_write() -> None:
    """abort() returns only when no write is in flight and none can start afterwards."""
    slot = torch.zeros(len(EXPECTED), 4, 64, 64)
    in_callback, release = threading.Event(), threading.Event()

    def slow_destination(request_id: str, name: str) -> torch.Tensor:
        if name == "state.1":
            in_callback.set()
            release.wait(5.0)
        return slot[int(name.split(".")[1])]

    with TcpReceiver(slow_destination, lambda rid: None) as rx:
        desc = rx.reserve("req", EXPECTED, 10.0)
        tx, src = TcpSender(), tensors()
        tx.open(desc, 5.0)
        tx.send("state.0", src["state.0"])
        tx.send("state.1", src["state.1"])  # all its bytes sit in the receiver's socket buffer
        assert in_callback.wait(5.0)
        rx.abort("req")
        slot.fill_(-1.0)  # the owner hands the slot to someone else
        release.set()
        with pytest.raises(TransferError):
            tx.send("state.2", src["state.2"])
            tx.commit(tx.manifest(0))
        deadline = time.monotonic() + 5.0
        while rx.connections() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rx.connections() == 0
        assert bool((slot == -1.0).all()), "a write landed after abort() returned"
        assert rx.pending() == 0


def test_many_expiries_each_fire_once(receiver: TcpReceiver, owner: Owner) -> None:
    for i in range(20):
        receiver.reserve(f"r{i}", EXPECTED, 0.1 + 0.01 * i)
    deadline = time.monotonic() + 0.3 + SLACK_S + 2.0
    while receiver.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(rid for rid, _ in owner.expired) == sorted(f"r{i}" for i in range(20))
