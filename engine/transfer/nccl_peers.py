"""The nccl backend's communicators: one per prefill-decode pair, built lazily, rebuilt when
either side restarts.

Both ends keep the pair's communicator under a key the receiver chose when it built it. The
sender's HELLO carries its identity (slot = host + GPU UUID, which survives a restart; instance
= a per-process random id, which does not) and the key it holds for that receiver address:
- the receiver holds a live communicator for that slot with the same instance and key: reuse;
- anything else (the sender restarted, or either side dropped the communicator after a
  failure): the receiver aborts what it held for the slot, makes a new unique id, sends it with
  a new key in the HELLO reply, and both join a 2-rank communicator (receiver rank 0, sender
  rank 1), each bounded by a timeout;
- a reply from another receiver instance (the decode worker restarted) always carries a new
  unique id, so the sender aborts its old communicator and joins the new one.
An operation that times out or fails aborts the communicator at that end and drops it; the
other end notices on its next HELLO (key mismatch) or its own timeout.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from engine.transfer.base import TransferError
from engine.transfer.cuda_ipc_handles import device_uuid
from engine.transfer.nccl_comm import Communicator, new_unique_id

PROCESS_INSTANCE = secrets.token_hex(8)  # a restarted process is a new instance
SENDER_RANK, RECEIVER_RANK = 1, 0
MAX_LINKS = 64  # each communicator holds NCCL buffers on the GPU (tens of MB)
Reply = Callable[[dict[str, object]], None]


@dataclass(frozen=True)
class PeerId:
    """A sender as a receiver knows it."""

    slot: tuple[str, str]  # (host, GPU UUID)
    instance: str
    pid: int


def local_identity(device: torch.device) -> dict[str, object]:
    return {
        "host": socket.gethostname(),
        "gpu": device_uuid(device.index or 0),
        "instance": PROCESS_INSTANCE,
        "pid": os.getpid(),
    }


def parse_identity(d: object) -> PeerId:
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("host", "gpu")):
        raise TransferError(f"malformed nccl peer identity {d!r}")
    pid = d.get("pid")
    return PeerId(
        (d["host"], d["gpu"]), str(d.get("instance", "")), pid if isinstance(pid, int) else -1
    )


@dataclass
class Link:
    """One end of a pair's communicator; `peer_instance` is the other end's instance."""

    key: str
    peer_instance: str
    comm: Communicator


class _KeyedLocks:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[object, threading.Lock] = {}

    @contextmanager
    def hold(self, key: object) -> Iterator[None]:
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class ReceiverLinks:
    """The receiver's rank-0 ends, one per sender slot."""

    def __init__(self, device: torch.device, init_timeout_s: float) -> None:
        self.device, self.init_timeout_s = device, init_timeout_s
        self.built = 0  # communicators built over this receiver's life
        self._lock = threading.Lock()
        self._slot_locks = _KeyedLocks()
        self._links: dict[tuple[str, str], Link] = {}

    def greet(self, peer: PeerId, their_key: str, reply: Reply, fields: dict[str, object]) -> Link:
        """Answer a bound HELLO (through `reply`) and return the link to use."""
        with self._slot_locks.hold(peer.slot):
            with self._lock:
                link = self._links.get(peer.slot)
            current = link is not None and not link.comm.broken
            if current and (link.peer_instance, link.key) == (peer.instance, their_key):
                reply({**fields, "comm": link.key})
                return link
            if link is not None:
                self.drop(link)
            uid, key = new_unique_id(), secrets.token_hex(8)
            reply({**fields, "comm": key, "uid": base64.b64encode(uid).decode()})
            comm = Communicator.create(
                2, uid, RECEIVER_RANK, self.device, self.init_timeout_s, ("recv", SENDER_RANK)
            )
            link = Link(key, peer.instance, comm)
            with self._lock:
                evicted = _oldest_beyond(self._links, MAX_LINKS - 1)
                self._links[peer.slot] = link
                self.built += 1
            for stale in evicted:
                stale.comm.abort()
            return link

    def drop(self, link: Link) -> None:
        """Abort a link's communicator and forget it (if it is still the slot's)."""
        link.comm.abort()
        with self._lock:
            for slot, held in list(self._links.items()):
                if held is link:
                    del self._links[slot]

    def live(self) -> int:
        with self._lock:
            return sum(not link.comm.broken for link in self._links.values())

    def close(self) -> None:
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.comm.abort()


def _oldest_beyond(links: dict[object, Link], size: int) -> list[Link]:
    """Remove and return the oldest links (peers that vanished, usually) past `size`."""
    evicted = []
    while len(links) > size:
        evicted.append(links.pop(next(iter(links))))
    return evicted


class SenderLinks:
    """The sender's rank-1 ends, per receiver address; shared by every sender in the process."""

    def __init__(self) -> None:
        self.built = 0
        self._lock = threading.Lock()
        self._address_locks = _KeyedLocks()
        self._links: dict[tuple[str, int], Link] = {}

    @contextmanager
    def greeting(self, address: tuple[str, int]) -> Iterator[str]:
        """Serialize HELLOs to one receiver (one communicator build at a time); yields the key
        this process holds for it ("" for none)."""
        with self._address_locks.hold(address):
            with self._lock:
                link = self._links.get(address)
            yield link.key if link is not None and not link.comm.broken else ""

    def accept(
        self,
        address: tuple[str, int],
        reply: dict[str, object],
        device: torch.device,
        timeout_s: float,
    ) -> Link:
        """The link a HELLO reply points at: a new communicator when it carries a unique id."""
        with self._lock:
            old = self._links.get(address)
        key, instance = str(reply.get("comm", "")), str(reply.get("instance", ""))
        if "uid" not in reply:
            if old is None or old.key != key or old.comm.broken:
                raise TransferError(f"receiver {address} kept a communicator this process lacks")
            return old
        if old is not None:
            self.drop(address, old)
        try:
            uid = base64.b64decode(str(reply["uid"]), validate=True)
        except (binascii.Error, ValueError) as e:
            raise TransferError(f"malformed NCCL unique id from {address}") from e
        comm = Communicator.create(2, uid, SENDER_RANK, device, timeout_s, ("send", RECEIVER_RANK))
        link = Link(key, instance, comm)
        with self._lock:
            evicted = _oldest_beyond(self._links, MAX_LINKS - 1)  # type: ignore[arg-type]
            self._links[address] = link
            self.built += 1
        for stale in evicted:
            stale.comm.abort()
        return link

    def forget(self, address: tuple[str, int]) -> None:
        """The receiver at `address` is unreachable: drop the communicator with it."""
        with self._lock:
            link = self._links.pop(address, None)
        if link is not None:
            link.comm.abort()

    def drop(self, address: tuple[str, int], link: Link) -> None:
        link.comm.abort()
        with self._lock:
            if self._links.get(address) is link:
                del self._links[address]


SENDER_LINKS = SenderLinks()
