"""A worker's side of the prefix index: collect the store's block events and publish them in
batches, and republish the whole resident set every `refresh_s`.

The periodic full republish keeps the TTL stamps of long-lived blocks fresh and repopulates the
index after Redis restarts empty or after batches were dropped while it was down (then the next
successful flush is a full one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from control_plane.prefix_index import PrefixIndex
from engine.cache.prefix_types import BlockEvent


class IndexPublisher:
    def __init__(
        self,
        index: PrefixIndex,
        worker_id: str,
        resident: Callable[[], list[BlockEvent]],
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index, self.worker_id, self._resident = index, worker_id, resident
        self.refresh_s = refresh_s if refresh_s is not None else index.ttl_s / 3
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[BlockEvent] = []
        self._next_refresh = 0.0  # the first flush is a full one
        self.full_refreshes = 0

    def record(self, event: BlockEvent) -> None:
        """The store's `on_event` callback: quick, never touches Redis."""
        with self._lock:
            self._pending.append(event)

    def flush(self) -> bool:
        """Publish what is pending (plus the resident set when a refresh is due) in one batch.
        False when Redis dropped it; the next successful flush is then a full republish."""
        with self._lock:
            batch, self._pending = self._pending, []
        full = self._clock() >= self._next_refresh
        if full:
            batch += self._resident()  # after the pending events: the current state wins
        if not batch:
            return True
        ok = self.index.publish(self.worker_id, batch)
        if not ok:
            self._next_refresh = 0.0
        elif full:
            self._next_refresh = self._clock() + self.refresh_s
            self.full_refreshes += 1
        return ok
