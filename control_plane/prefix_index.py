"""The Redis prefix index: block hash -> the workers (and tiers) that hold the block.

Each block is a Redis hash at `duet:{<fingerprint>}:idx:<block hash>`; the hash tag puts every
key of one model in one Redis Cluster slot, so the lookup script may read them all. A field is
a worker id (or `@l3` for the shared L3 tier), its value `<expires_at_ms>:<tier>:<s|->`. Every
publish re-stamps the fields it writes and refreshes the key's TTL; stale fields (a worker that
died without publishing its evictions) are ignored by lookups and vanish with the key.

Workers publish batches of `BlockEvent`s in one pipeline. The router's lookup is one round
trip: a Lua script returns the live holders of the prompt's blocks up to the first block no
one holds, and the longest chain per worker is computed here (prefix_index_chains).

Redis is an accelerator: when it is down, slow or flushed, lookups are misses and publishes are
dropped (both counted), never exceptions; it recovers by itself (see RedisGuard), and
`healthy` is what the gateway's /health reports as "degraded".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from redis.commands.core import Script

from control_plane.prefix_index_chains import (
    SHARED_HOLDER,
    Holding,
    PrefixLookup,
    decode_holding,
    encode_holding,
    holder_for,
    longest_chains,
)
from engine.cache.prefix_redis import Client, RedisLink
from engine.cache.prefix_types import BlockEvent

_LOOKUP_LUA = """
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local kv = redis.call('HGETALL', KEYS[i])
  local live = {}
  for j = 1, #kv, 2 do
    local expires = tonumber(string.match(kv[j + 1], '^(%d+):'))
    if expires and expires >= now then
      live[#live + 1] = kv[j]
      live[#live + 1] = kv[j + 1]
    end
  end
  if #live == 0 then break end
  out[#out + 1] = live
end
return out
"""


@dataclass
class IndexStats:
    lookups: int = 0
    failed_lookups: int = 0
    lookup_seconds: float = 0.0  # total over successful lookups
    published_batches: int = 0
    published_events: int = 0
    dropped_batches: int = 0
    dropped_events: int = 0


def index_key(fingerprint: str, block_hash: str) -> str:
    return f"duet:{{{fingerprint}}}:idx:{block_hash}"


class PrefixIndex:
    def __init__(
        self,
        url: str,
        fingerprint: str,
        *,
        password: str | None = None,
        ttl_s: float = 300.0,
        timeout_s: float = 0.25,
        cluster: bool = False,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 s, got {ttl_s}")
        self.fingerprint, self.ttl_s = fingerprint, ttl_s
        self.link = RedisLink(
            url,
            password=password,
            timeout_s=timeout_s,
            cluster=cluster,
            retry_after_s=retry_after_s,
        )
        self.stats = IndexStats()
        self._stats_lock = threading.Lock()
        self._clock = clock  # wall clock: stamps written by workers are read by the router
        self._lookup_script: Script | None = None  # registered with the client once built

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    @property
    def client(self) -> Client:
        return self.link.client

    def key(self, block_hash: str) -> str:
        return index_key(self.fingerprint, block_hash)

    def alive_key(self, worker_id: str) -> str:
        """The worker's sentinel: set by each full republish, gone when Redis was flushed."""
        return f"duet:{{{self.fingerprint}}}:alive:{worker_id}"

    def publish(
        self,
        worker_id: str,
        events: Iterable[BlockEvent],
        incarnation: str = "",
        full: bool = False,
    ) -> bool:
        """Apply one batch of a worker's events in one pipeline (the last event per block and
        holder wins); a `full` republish also sets the worker's sentinel. False when the batch
        was dropped because Redis is unavailable."""
        if worker_id == SHARED_HOLDER:
            raise ValueError(f"{SHARED_HOLDER!r} is reserved for the shared L3 tier")
        latest = {(e.block_hash, holder_for(worker_id, e.tier)): e for e in events}
        if not latest and not full:
            return True
        expires_ms = int((self._clock() + self.ttl_s) * 1000)
        ttl_ms = int(self.ttl_s * 1000)

        def send(client: Client) -> bool:
            pipe = client.pipeline(transaction=False)
            for (block_hash, holder), event in latest.items():
                key = self.key(block_hash)
                if event.tier is None:
                    pipe.hdel(key, holder)
                else:
                    pipe.hset(
                        key,
                        holder,
                        encode_holding(expires_ms, event.tier, event.snapshot, incarnation),
                    )
                    pipe.pexpire(key, ttl_ms)
            if full:
                pipe.set(self.alive_key(worker_id), incarnation or "-", px=ttl_ms)
            pipe.execute()
            return True

        ok, _ = self.link.run(send, False)
        with self._stats_lock:
            if ok:
                self.stats.published_batches += 1
                self.stats.published_events += len(latest)
            else:
                self.stats.dropped_batches += 1
                self.stats.dropped_events += len(latest)
        return ok

    def lookup(
        self, block_hashes: Sequence[str], incarnations: Mapping[str, str] | None = None
    ) -> PrefixLookup:
        """The longest cached chain per worker for a prompt's block hashes, in one round trip;
        `PrefixLookup(ok=False)` (no hits) when Redis is unavailable."""
        with self._stats_lock:
            self.stats.lookups += 1
        if not block_hashes:
            return PrefixLookup()
        keys = [self.key(h) for h in block_hashes]
        now_ms = int(self._clock() * 1000)
        start = time.perf_counter()
        raw, ok = self.link.run(lambda c: self._script(c)(keys=keys, args=[now_ms]), None)
        with self._stats_lock:
            if not ok or raw is None:
                self.stats.failed_lookups += 1
                return PrefixLookup(ok=False)
            self.stats.lookup_seconds += time.perf_counter() - start
        return longest_chains([_holdings(flat) for flat in raw], incarnations)

    def is_alive(self, worker_id: str) -> bool | None:
        """Whether the worker's sentinel is there (None: Redis could not be asked)."""
        found, ok = self.link.run(lambda c: bool(c.exists(self.alive_key(worker_id))), False)
        return found if ok else None

    def probe(self) -> bool:
        """Ping Redis (unless backing off); the result is also what `healthy` reports next."""
        ok, _ = self.link.run(lambda c: bool(c.ping()), False)
        return ok

    def close(self) -> None:
        self.link.close()

    def _script(self, client: Client) -> Script:
        if self._lookup_script is None:
            self._lookup_script = client.register_script(_LOOKUP_LUA)
        return self._lookup_script


def _holdings(flat: list[bytes]) -> dict[str, Holding]:
    out = {}
    for holder, value in zip(flat[::2], flat[1::2], strict=True):
        holding = decode_holding(value.decode())
        if holding is not None:
            out[holder.decode()] = holding
    return out
