"""The router's use of the prefix index: for a prompt, how many of its tokens each prefill
worker could load from cache instead of computing.

Workers report their fingerprint and block size in Load; prompts are hashed once per distinct
(fingerprint, block size) among healthy prefill workers, and each group is looked up in one
round trip. Only blocks ending before the last prompt token count (a worker always computes
the last token). Redis-py is synchronous, so lookups run in a thread with the index's own
timeout; Redis down means no hits, never a failed request. `state` is what /health shows.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.prefix_index import PrefixIndex
from control_plane.registry import WorkerEntry
from engine.cache.block_hash import block_hashes

log = logging.getLogger(__name__)
PROBE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class RedisSettings:
    url: str
    password: str | None = None
    cluster: bool = False
    timeout_s: float = 0.25


class PrefixRouting:
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._indexes: dict[str, PrefixIndex] = {}
        self._lock = threading.Lock()
        self._index("probe")  # a bad URL fails at start-up, loudly; probes go through it

    def _index(self, fingerprint: str) -> PrefixIndex:
        with self._lock:
            index = self._indexes.get(fingerprint)
            if index is None:
                s = self.settings
                index = PrefixIndex(
                    s.url,
                    fingerprint,
                    password=s.password,
                    cluster=s.cluster,
                    timeout_s=s.timeout_s,
                )
                self._indexes[fingerprint] = index
            return index

    def cached_tokens(
        self, prompt_ids: Sequence[int], workers: Sequence[WorkerEntry]
    ) -> dict[str, int]:
        """worker_id -> prompt tokens that worker can load (absent: none). Blocking."""
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)
        incarnations: dict[str, str] = {}
        for w in workers:
            pc = w.load.prefix_cache
            if pc.enabled and pc.fingerprint and pc.block_size > 0:
                groups[(pc.fingerprint, pc.block_size)].append(w.worker_id)
                incarnations[w.worker_id] = pc.incarnation
        out: dict[str, int] = {}
        for (fingerprint, block_size), ids in groups.items():
            usable = (len(prompt_ids) - 1) // block_size
            if usable <= 0:
                continue
            hashes = block_hashes(prompt_ids[: usable * block_size], block_size, fingerprint)
            found = self._index(fingerprint).lookup(hashes, incarnations)
            for worker_id in ids:
                blocks = found.blocks_for(worker_id)
                if blocks:
                    out[worker_id] = blocks * block_size
        return out

    async def lookup(
        self, prompt_ids: Sequence[int], workers: Sequence[WorkerEntry]
    ) -> tuple[dict[str, int], float]:
        """(cached tokens per worker, seconds the lookup took), off the event loop."""
        start = time.perf_counter()
        cached = await asyncio.to_thread(self.cached_tokens, prompt_ids, workers)
        return cached, time.perf_counter() - start

    @property
    def healthy(self) -> bool:
        with self._lock:
            indexes = list(self._indexes.values())
        return all(i.healthy for i in indexes)

    def state(self, workers: Sequence[WorkerEntry]) -> str:
        """'ok', or 'degraded' when Redis fails here or any prefill worker reports it failing."""
        worker_ok = all(
            w.load.prefix_cache.redis_healthy for w in workers if w.load.prefix_cache.enabled
        )
        return "ok" if self.healthy and worker_ok else "degraded"

    async def probe_forever(self) -> None:
        """Ping Redis once at start, then every PROBE_INTERVAL_S while unhealthy, so the state
        is right without traffic (a success makes every index healthy again)."""
        await asyncio.to_thread(self._probe_all)  # a Redis down at start shows at once
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if not self.healthy:
                ok = await asyncio.to_thread(self._probe_all)
                if ok:
                    log.info("prefix index reachable again")

    def _probe_all(self) -> bool:
        with self._lock:
            indexes = list(self._indexes.values())
        return all([i.probe() for i in indexes])

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()
