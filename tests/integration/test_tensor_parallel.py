"""Tensor-parallel workers (2 ranks, gloo on loopback) against the single-process engine:
greedy output token for token (fp32), with TP on either side of the transfer or both, prefix
cache hits on a TP prefill worker, and a lost rank ending the worker instead of hanging it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from control_plane.pd_client import StageError, WorkerPair, generate
from engine.model.ling import LingModel
from engine.sampling import SamplingParams
from tests.integration.near_ties import greedy_without_ties, tie_free_prompts
from tests.integration.procs import WorkerProc, start_worker, wait_pools_empty

STEPS = 6
GREEDY = SamplingParams(max_tokens=STEPS, temperature=0.0, ignore_eos=True)
TP2 = ("--tensor-parallel-size", "2", "--tp-timeout-s", "20")


@pytest.fixture(scope="module")
def workers(tiny_model_dir: Path) -> Iterator[dict[str, WorkerProc]]:
    """A prefill and a decode worker with one rank and with two ranks each."""
    started: dict[str, WorkerProc] = {}
    chunk = ("--prefill-chunk", "32", "--prefix-snapshots", "every")
    try:
        started["p2"] = start_worker("prefill", tiny_model_dir, *chunk, *TP2)
        started["d2"] = start_worker("decode", tiny_model_dir, "--num-pages", "256", *TP2)
        started["p1"] = start_worker("prefill", tiny_model_dir, *chunk)
        started["d1"] = start_worker("decode", tiny_model_dir, "--num-pages", "256")
        yield started
        for w in started.values():
            wait_pools_empty(w)
    finally:
        for w in started.values():
            w.stop()


async def _run(
    prefill: WorkerProc,
    decode: WorkerProc,
    prompts: dict[str, list[int]],
    serial: bool = False,
    local: bool = False,
) -> dict[str, list[int]]:
    stubs, channels = WorkerPair.connect(prefill.address, decode.address)

    async def one(rid: str, prompt: list[int]) -> list[int]:
        events = generate(stubs, rid, prompt, GREEDY, timeout_s=120, local_prefill=local)
        return [e.token_id async for e in events]

    try:
        if serial:
            return {rid: await one(rid, p) for rid, p in prompts.items()}
        got = await asyncio.gather(*(one(rid, p) for rid, p in prompts.items()))
        return dict(zip(prompts, got, strict=True))
    finally:
        for ch in channels:
            await ch.close()


@pytest.mark.parametrize("pair", [("p2", "d2"), ("p2", "d1"), ("p1", "d2")])
def test_greedy_output_matches_single_process(
    workers: dict[str, WorkerProc], tiny_model: LingModel, pair: tuple[str, str]
) -> None:
    lengths = [1, 31, 33, 70, 120, 5, 64, 17]
    found = tie_free_prompts(tiny_model, lengths, STEPS, seed=len(pair[0] + pair[1]) * 7)
    prompts = {f"{pair[0]}{pair[1]}-{i}": p for i, (p, _) in enumerate(found)}
    got = asyncio.run(_run(workers[pair[0]], workers[pair[1]], prompts))
    for (rid, _), (_, want) in zip(prompts.items(), found, strict=True):
        assert got[rid] == want, rid
    wait_pools_empty(workers[pair[0]])
    wait_pools_empty(workers[pair[1]])


def test_local_prefill_on_a_tp_decode_worker_matches_single_process(
    workers: dict[str, WorkerProc], tiny_model: LingModel
) -> None:
    """Conditional disaggregation: every rank of the decode worker prefills its slice."""
    found = tie_free_prompts(tiny_model, [3, 40, 90], STEPS, seed=77)
    prompts = {f"local-{i}": p for i, (p, _) in enumerate(found)}
    got = asyncio.run(_run(workers["p1"], workers["d2"], prompts, local=True))
    assert [got[rid] for rid in prompts] == [want for _, want in found]
    wait_pools_empty(workers["d2"])


def test_prefix_hits_on_a_tp_prefill_worker_match_single_process(
    workers: dict[str, WorkerProc], tiny_model: LingModel
) -> None:
    """The cache holds whole states gathered from both ranks; a hit scatters them back."""
    before = workers["p2"].load().prefix_cache.hit_tokens
    head = tie_free_prompts(tiny_model, [130], STEPS, seed=41)[0][0]
    gen = torch.Generator().manual_seed(42)
    prompts = {"head": head}
    for k in range(2):
        tail = torch.randint(3, tiny_model.cfg.vocab_size - 20, (9 + k,), generator=gen).tolist()
        prompts[f"turn{k}"] = head + tail
    got = asyncio.run(_run(workers["p2"], workers["d2"], prompts, serial=True))
    for rid, prompt in prompts.items():
        want = greedy_without_ties(tiny_model, prompt, STEPS)
        if want is not None:  # a near-tie flips with any change of reduction order
            assert got[rid] == want, rid
    assert workers["p2"].load().prefix_cache.hit_tokens - before == 2 * 128


def _follower_pids(worker: WorkerProc) -> list[int]:
    children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read_text()
    pids = [int(p) for p in children.split()]
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_a_lost_rank_ends_the_worker_and_its_requests(tiny_model_dir: Path) -> None:
    prefill = start_worker("prefill", tiny_model_dir)
    decode = start_worker("decode", tiny_model_dir, *TP2)
    try:
        (follower,) = _follower_pids(decode)
        prompts = {f"lost-{i}": list(range(5, 40 + i)) for i in range(4)}
        params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

        async def scenario() -> list[BaseException | list[int]]:
            stubs, channels = WorkerPair.connect(prefill.address, decode.address)

            async def one(rid: str, prompt: list[int]) -> list[int]:
                return [e.token_id async for e in generate(stubs, rid, prompt, params, 60)]

            tasks = [asyncio.create_task(one(r, p)) for r, p in prompts.items()]
            await asyncio.sleep(1.0)
            os.kill(follower, signal.SIGKILL)
            try:
                return await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), timeout=30
                )
            finally:
                for ch in channels:
                    await ch.close()

        start = time.monotonic()
        outcomes = asyncio.run(scenario())
        assert time.monotonic() - start < 30
        assert decode.proc.wait(timeout=15) == 70
        failed = [out for out in outcomes if isinstance(out, StageError)]
        assert failed, outcomes  # 400 tokens each cannot finish in the second before the kill
        for out in outcomes:  # nothing hangs, nothing is cut short without an error
            assert isinstance(out, StageError) or len(out) == 400, out
        assert {(e.side, e.code) for e in failed} == {("decode", grpc.StatusCode.UNAVAILABLE)}
        wait_pools_empty(prefill)
    finally:
        prefill.stop()
        decode.stop()


def _gone(pids: list[int], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_stops_every_rank_and_kill9_of_rank0_leaves_no_orphan(
    tiny_model_dir: Path,
) -> None:
    for how in ("sigterm", "kill9"):
        worker = start_worker("prefill", tiny_model_dir, *TP2)
        try:
            followers = _follower_pids(worker)
            assert len(followers) == 1
            if how == "sigterm":
                worker.proc.send_signal(signal.SIGTERM)
                assert worker.proc.wait(timeout=30) == 0
            else:
                worker.kill9()
            assert _gone(followers), f"{how}: rank 1 outlived rank 0"
        finally:
            worker.stop()
