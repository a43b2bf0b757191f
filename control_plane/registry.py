"""The worker registry: soft state rebuilt from heartbeats.

A worker is routable while it is healthy (heartbeat within `expiry_s`) and not draining. The
router adds its own in-flight assignments on top of the last reported load, so a burst between
two heartbeats does not pile onto one worker.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from duet.v1 import worker_pb2 as pb


@dataclass
class WorkerEntry:
    worker_id: str
    role: str
    address: str
    load: pb.LoadResponse
    last_seen: float
    draining: bool = False
    inflight: int = 0  # requests the router sent since they were assigned, not yet finished
    inflight_tokens: int = 0
    failures: int = 0  # consecutive transport failures seen by the gateway


@dataclass
class Registry:
    expiry_s: float = 3.0
    heartbeat_interval_s: float = 0.5
    _workers: dict[str, WorkerEntry] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, worker_id: str, role: str, address: str, load: pb.LoadResponse) -> None:
        if role not in ("prefill", "decode"):
            raise ValueError(f"role must be prefill or decode, got {role!r}")
        if not worker_id or not address:
            raise ValueError("worker_id and address are required")
        with self._lock:
            old = self._workers.get(worker_id)
            entry = WorkerEntry(worker_id, role, address, load, time.monotonic())
            if old is not None:
                entry.inflight, entry.inflight_tokens = old.inflight, old.inflight_tokens
            self._workers[worker_id] = entry

    def heartbeat(self, worker_id: str, load: pb.LoadResponse, draining: bool) -> bool:
        with self._lock:
            entry = self._workers.get(worker_id)
            if entry is None:
                return False
            entry.load, entry.draining, entry.last_seen = load, draining, time.monotonic()
            entry.failures = 0
            return True

    def deregister(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    def mark_failed(self, address: str) -> None:
        """The gateway could not reach this worker: leave it out until it heartbeats again."""
        with self._lock:
            for entry in self._workers.values():
                if entry.address == address:
                    entry.failures += 1
                    entry.last_seen = 0.0

    def healthy(self, role: str) -> list[WorkerEntry]:
        now = time.monotonic()
        with self._lock:
            return [
                w
                for w in self._workers.values()
                if w.role == role and not w.draining and now - w.last_seen <= self.expiry_s
            ]

    def all(self) -> list[WorkerEntry]:
        with self._lock:
            return list(self._workers.values())

    def assign(self, entry: WorkerEntry, tokens: int) -> None:
        with self._lock:
            entry.inflight += 1
            entry.inflight_tokens += tokens

    def release(self, entry: WorkerEntry, tokens: int) -> None:
        with self._lock:
            entry.inflight = max(0, entry.inflight - 1)
            entry.inflight_tokens = max(0, entry.inflight_tokens - tokens)
