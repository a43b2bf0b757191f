"""A worker's side of the prefix index: collect the store's block events and publish them in
batches, and republish the whole resident set every `refresh_s`.

The periodic full republish keeps the TTL stamps of long-lived blocks fresh and repopulates the
index after Redis restarts empty or after batches were dropped while it was down (then the next
successful flush is a full one). A full republish also sets the worker's sentinel key; checked
every SENTINEL_CHECK_S, a missing sentinel (Redis flushed, or restarted without a failed
call in between) makes the next flush a full one too.

The events of a dropped batch are kept (the last per block, at most MAX_RETAINED blocks) and go
out with the next flush: a full republish re-asserts what is resident but could not withdraw a
block evicted during the outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from control_plane.prefix_index import PrefixIndex
from engine.cache.prefix_types import L3, BlockEvent

MAX_RETAINED = 1_000_000  # blocks whose last event is kept across dropped batches
SENTINEL_CHECK_S = 1.0


class IndexPublisher:
    def __init__(
        self,
        index: PrefixIndex,
        worker_id: str,
        resident: Callable[[], list[BlockEvent]],
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        incarnation: str = "",
    ) -> None:
        self.index, self.worker_id, self._resident = index, worker_id, resident
        self.incarnation = incarnation  # this process: holdings of an earlier one are stale
        self.refresh_s = refresh_s if refresh_s is not None else index.ttl_s / 3
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[BlockEvent] = []
        self._retained: dict[tuple[str, bool], BlockEvent] = {}  # from dropped batches
        self._next_refresh = 0.0  # the first flush is a full one
        self._next_sentinel_check = 0.0
        self.full_refreshes = 0

    def record(self, event: BlockEvent) -> None:
        """The store's `on_event` callback: quick, never touches Redis."""
        with self._lock:
            self._pending.append(event)

    def flush(self) -> bool:
        """Publish what is pending (plus the resident set when a refresh is due) in one batch.
        False when Redis dropped it; the next successful flush is then a full republish."""
        with self._lock:
            pending, self._pending = self._pending, []
        batch = [*self._retained.values(), *pending]  # oldest first: the last event wins
        self._retained = {}
        full = self._clock() >= self._next_refresh or self._index_was_flushed()
        if full:
            batch += self._resident()  # after the pending events: the current state wins
        elif not batch:
            return True
        ok = self.index.publish(self.worker_id, batch, self.incarnation, full=full)
        if not ok:
            self._next_refresh = 0.0
            self._retain(batch)
        elif full:
            self._next_refresh = self._clock() + self.refresh_s
            self.full_refreshes += 1
        return ok

    def _index_was_flushed(self) -> bool:
        """True when, checked at most every SENTINEL_CHECK_S, this worker's sentinel is gone."""
        now = self._clock()
        if now < self._next_sentinel_check:
            return False
        self._next_sentinel_check = now + SENTINEL_CHECK_S
        return self.index.is_alive(self.worker_id) is False

    def _retain(self, batch: list[BlockEvent]) -> None:
        """Keep the last event per (block, shared tier or not) of a dropped batch."""
        for event in batch:
            key = (event.block_hash, event.tier == L3)
            self._retained.pop(key, None)  # re-inserted last: dict order is event order
            if len(self._retained) < MAX_RETAINED:
                self._retained[key] = event
