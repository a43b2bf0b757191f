"""The optional L3 tier of the prefix store: opaque bytes by block hash, shared by workers.

`BlockTier` is the protocol; `RedisBlockTier` keeps each block under
`duet:{<fingerprint>}:blk:<hash>` (hash-tagged, so every key of a model sits in one Redis
Cluster slot) with a TTL that each read refreshes. Any Redis error is a miss or a dropped
write, never an exception.
"""

from __future__ import annotations

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
    return f"duet:{{{fingerprint}}}:blk:{block_hash}"


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
