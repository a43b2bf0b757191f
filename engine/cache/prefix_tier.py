"""The optional L3 tier of the prefix store: opaque bytes by block hash, shared by workers.

`BlockTier` is the protocol; `RedisBlockTier` keeps each block under
`duet:<fingerprint>:blk:<hash>` (not hash-tagged: blocks are large and accessed one key at
a time, so in a Redis Cluster they spread over the nodes; the index keys are the ones that
share a slot) with a TTL that each read refreshes. Any Redis error is a miss or a dropped
write, never an exception.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from engine.cache.prefix_redis import Client, RedisLink


class BlockTier(Protocol):
    def get(self, block_hash: str) -> bytes | None:
        """The bytes stored for the block, or None (absent or unavailable)."""
        ...

    def put(self, block_hash: str, data: bytes) -> bool:
        """Store the bytes; False when they could not be stored."""
        ...

    def delete(self, block_hash: str) -> None: ...


def block_key(fingerprint: str, block_hash: str) -> str:
    return f"duet:{fingerprint}:blk:{block_hash}"


class RedisBlockTier:
    def __init__(
        self,
        url: str,
        fingerprint: str,
        *,
        password: str | None = None,
        ttl_s: float = 3600.0,
        timeout_s: float = 2.0,
        cluster: bool = False,
        retry_after_s: float = 1.0,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 s, got {ttl_s}")
        self.fingerprint = fingerprint
        self.ttl_ms = int(ttl_s * 1000)
        self.link = RedisLink(
            url,
            password=password,
            timeout_s=timeout_s,
            cluster=cluster,
            retry_after_s=retry_after_s,
        )

    @property
    def healthy(self) -> bool:
        return self.link.healthy

    @property
    def client(self) -> Client:
        return self.link.client

    def get(self, block_hash: str) -> bytes | None:
        key = block_key(self.fingerprint, block_hash)
        data, _ = self.link.run(lambda c: c.getex(key, px=self.ttl_ms), None)
        return data

    def put(self, block_hash: str, data: bytes) -> bool:
        key = block_key(self.fingerprint, block_hash)
        ok, _ = self.link.run(lambda c: bool(c.set(key, data, px=self.ttl_ms)), False)
        return ok

    def delete(self, block_hash: str) -> None:
        key = block_key(self.fingerprint, block_hash)
        self.link.run(lambda c: c.delete(key), 0)

    def close(self) -> None:
        self.link.close()


class BackgroundBlockTier:
    """Writes to an inner tier on a background thread, so a slow or black-holed Redis never
    stalls the prefill step that inserts or evicts blocks.

    `put` queues the bytes and returns True at once (False when `max_pending_bytes` would be
    exceeded: the block is dropped like a failed write); a write that then fails is counted
    in `failed_writes` and the block is simply absent from L3 (a later read is a miss). Reads
    see queued writes. `close` drains the queue within its deadline."""

    def __init__(self, inner: BlockTier, max_pending_bytes: int = 256 << 20) -> None:
        self.inner, self.max_pending_bytes = inner, max_pending_bytes
        self._pending: dict[str, bytes] = {}  # insertion order = write order
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self.failed_writes = 0
        self._thread = threading.Thread(target=self._write_loop, name="duet-l3-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        return bool(getattr(self.inner, "healthy", True))

    def get(self, block_hash: str) -> bytes | None:
        with self._cond:
            queued = self._pending.get(block_hash)
        return queued if queued is not None else self.inner.get(block_hash)

    def put(self, block_hash: str, data: bytes) -> bool:
        with self._cond:
            if self._closing or self._pending_bytes + len(data) > self.max_pending_bytes:
                return False
            self._drop(block_hash)
            self._pending[block_hash] = data
            self._pending_bytes += len(data)
            self._cond.notify()
        return True

    def delete(self, block_hash: str) -> None:
        with self._cond:
            self._drop(block_hash)
        self.inner.delete(block_hash)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def _drop(self, block_hash: str) -> None:
        old = self._pending.pop(block_hash, None)
        if old is not None:
            self._pending_bytes -= len(old)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                block_hash = next(iter(self._pending))
                data = self._pending[block_hash]
            ok = self.inner.put(block_hash, data)
            with self._cond:
                if self._pending.get(block_hash) is data:  # not replaced or deleted meanwhile
                    self._drop(block_hash)
                if not ok:
                    self.failed_writes += 1
                self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to `timeout_s`), then stop; the rest is dropped."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            self._pending.clear()
            self._pending_bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout=1.0)
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
