"""The prefill worker's prefix cache: the block store (L1/L2, optional L3 in Redis), the snapshot
policy, and the publisher that tells the Redis index what this worker holds.

A prompt is looked up by the chained hashes of its full blocks that end before its last token
(a worker always computes at least the last token: its hidden state goes to the decode side).
A hit pins the chain until `release`; the caller loads its latents and state and computes only
the rest. Redis trouble never fails a request: lookups miss, publishes are dropped and redone by
the next full refresh, and `redis_healthy` turns false until Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from control_plane.prefix_index import PrefixIndex
from control_plane.prefix_index_publisher import IndexPublisher
from engine.cache.block_hash import block_hashes, model_fingerprint
from engine.cache.prefix_store import PrefixHandle, PrefixStore, PrefixStoreConfig
from engine.cache.prefix_tier import BackgroundBlockTier, RedisBlockTier
from engine.cache.prefix_types import BlockEvent
from engine.prefix_config import MIB, PrefixCacheConfig

log = logging.getLogger(__name__)
PUBLISH_INTERVAL_S = 0.2  # the longest a publisher sleeps without events (refresh checks)
BATCH_WINDOW_S = 0.02  # after the first event, wait this long so a prompt's events share a batch
L3_TIMEOUT_S = 1.0  # one read or write of a block (Ling-2.6-flash: 56 MiB) in Redis


@dataclass(frozen=True)
class PrefixLookupResult:
    hashes: list[str]  # every full block of the prompt
    handle: PrefixHandle | None  # the pinned cached prefix, or None on a miss

    @property
    def cached_tokens(self) -> int:
        return self.handle.num_tokens if self.handle is not None else 0


class WorkerPrefixCache:
    def __init__(self, cfg: PrefixCacheConfig, model_dir: Path, device: str) -> None:
        self.cfg, self.block_size = cfg, cfg.block_size
        self.policy = cfg.policy
        self.fingerprint = model_fingerprint(model_dir)
        self.incarnation = uuid.uuid4().hex[:12]  # this process, in every index entry it writes
        self.index = self._make_index() if cfg.redis_url else None
        self.l3 = self._make_l3() if cfg.l3 else None
        self._events: list[BlockEvent] = []
        self.publisher: IndexPublisher | None = None
        store_cfg = PrefixStoreConfig(
            block_size=cfg.block_size,
            l1_bytes=cfg.l1_mb * MIB,
            l2_bytes=cfg.l2_mb * MIB,
            device=device,
            l3_write_through=cfg.l3,  # a fresh worker can then reuse what this one computed
        )
        self.store = PrefixStore(store_cfg, self.l3, self._record)
        self._counts_lock = threading.Lock()
        self.hit_tokens = 0
        self.computed_tokens = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by every store event
        self._thread: threading.Thread | None = None

    def _redis_kwargs(self) -> dict[str, object]:
        c = self.cfg
        return {"password": c.redis_password, "cluster": c.redis_cluster}

    def _make_index(self) -> PrefixIndex:
        assert self.cfg.redis_url is not None
        return PrefixIndex(
            self.cfg.redis_url,
            self.fingerprint,
            ttl_s=self.cfg.index_ttl_s,
            timeout_s=self.cfg.redis_timeout_s,
            **self._redis_kwargs(),  # type: ignore[arg-type]
        )

    def _make_l3(self) -> BackgroundBlockTier:
        """Redis as L3, written in the background (a slow Redis never stalls a prefill step);
        reads stay synchronous with a short timeout, and the guard skips a failing Redis."""
        assert self.cfg.redis_url is not None
        redis_tier = RedisBlockTier(
            self.cfg.redis_url,
            self.fingerprint,
            ttl_s=self.cfg.l3_ttl_s,
            timeout_s=L3_TIMEOUT_S,
            **self._redis_kwargs(),  # type: ignore[arg-type]
        )
        return BackgroundBlockTier(redis_tier)

    # Index publishing -------------------------------------------------------------------------
    def _record(self, event: BlockEvent) -> None:
        """The store's event callback (under its lock): queue for the publisher."""
        if self.publisher is not None:
            self.publisher.record(event)
            self._wake.set()

    def start_publishing(self, worker_id: str) -> None:
        """Publish this worker's blocks under `worker_id` (its registry id) from now on."""
        if self.index is None or self.publisher is not None:
            return
        self.publisher = IndexPublisher(
            self.index, worker_id, self.store.resident, incarnation=self.incarnation
        )
        self._thread = threading.Thread(
            target=self._publish_loop, name="duet-prefix-publish", daemon=True
        )
        self._thread.start()

    def _publish_loop(self) -> None:
        assert self.publisher is not None
        while not self._stop.is_set():
            if self._wake.wait(PUBLISH_INTERVAL_S):
                self._stop.wait(BATCH_WINDOW_S)
            self._wake.clear()  # events from here on wake the next round
            if self._stop.is_set():
                return
            try:
                self.publisher.flush()
            except Exception:  # never let the publisher die; Redis errors are already absorbed
                log.exception("prefix index publish failed")

    # Requests ---------------------------------------------------------------------------------
    def lookup(self, prompt_ids: Sequence[int]) -> PrefixLookupResult:
        hashes = block_hashes(prompt_ids, self.block_size, self.fingerprint)
        usable = (len(prompt_ids) - 1) // self.block_size
        handle = self.store.acquire(hashes[:usable])  # counted even when nothing can hit
        return PrefixLookupResult(hashes, handle)

    def snapshot_at(self, num_tokens: int, cached_tokens: int) -> tuple[int, ...]:
        """Token counts at which this prompt's prefill should keep a state snapshot."""
        start_block = cached_tokens // self.block_size
        return self.policy.token_counts(num_tokens, self.block_size, start_block)

    def insert(
        self, hashes: list[str], latents: torch.Tensor, snapshots: Mapping[int, torch.Tensor]
    ) -> int:
        """Store a finished prompt: `latents` [mla_layers, n, W] from token 0, `snapshots`
        token count -> state after that many tokens. Returns the number of new blocks."""
        by_block = {count // self.block_size - 1: s for count, s in snapshots.items()}
        return self.store.insert(hashes, latents, by_block)

    def finished(self, result: PrefixLookupResult, prompt_tokens: int) -> None:
        """Count a prompt's outcome and unpin its prefix."""
        with self._counts_lock:
            self.hit_tokens += result.cached_tokens
            self.computed_tokens += prompt_tokens - result.cached_tokens
        if result.handle is not None:
            self.store.release(result.handle)

    # Reporting --------------------------------------------------------------------------------
    @property
    def redis_healthy(self) -> bool:
        parts = [p for p in (self.index, self.l3) if p is not None]
        return all(p.healthy for p in parts)

    def load(self) -> dict[str, object]:
        """The fields of LoadResponse.prefix_cache."""
        stats, used = self.store.stats(), self.store.used_bytes()
        with self._counts_lock:
            hit_tokens, computed = self.hit_tokens, self.computed_tokens
        return {
            "enabled": True,
            "fingerprint": self.fingerprint,
            "incarnation": self.incarnation,
            "block_size": self.block_size,
            "redis_healthy": self.redis_healthy,
            "lookups": stats.lookups,
            "hits": stats.hits,
            "hit_tokens": hit_tokens,
            "computed_tokens": computed,
            "blocks": self.store.num_blocks(),
            "l1_bytes": used["l1"],
            "l2_bytes": used["l2"],
            "pinned_blocks": self.store.pinned_blocks(),
            "evictions": sum(stats.evictions.values()),
            "l3_hits": stats.l3_hits,
        }

    def check_integrity(self) -> None:
        self.store.check_integrity()

    def close(self) -> None:
        """Stop publishing and withdraw this worker's blocks from the index (best effort):
        pending events first (removals of evicted blocks), then every resident block."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.publisher is not None and self.index is not None:
            self.publisher.flush()
            gone = [BlockEvent(e.block_hash, None) for e in self.store.resident()]
            self.index.publish(self.publisher.worker_id, gone, self.incarnation)
        for part in (self.index, self.l3):
            if part is not None:
                part.close()
