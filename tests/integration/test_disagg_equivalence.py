"""Disaggregated greedy output equals the single-process engine, token for token (fp32).

Prompts are drawn so that their continuations have no numerical near-tie (near_ties.py): a
near-tie flips under any change of batch composition, in any engine."""

from __future__ import annotations

import asyncio

import torch

from control_plane.pd_client import WorkerPair, generate
from engine.generation import GenerationRequest, OfflineEngine
from engine.model.ling import LingModel
from engine.sampling import SamplingParams
from tests.integration.near_ties import tie_free_prompts
from tests.integration.procs import WorkerProc, wait_pools_empty

MAX_TOKENS = 8


def _prompts(model: LingModel, n: int) -> list[list[int]]:
    """n prompts of mixed lengths (1, around the prefill chunk of 32, several chunks)."""
    gen = torch.Generator().manual_seed(11)
    lengths = [1, 2, 31, 32, 33, 90, 150, *torch.randint(1, 120, (n - 7,), generator=gen).tolist()]
    return [p for p, _ in tie_free_prompts(model, lengths[:n], MAX_TOKENS, seed=3)]


def _offline(model: LingModel, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    engine = OfflineEngine(model, num_pages=2048, num_slots=64)
    outs: list[list[int]] = [[] for _ in prompts]
    for out in engine.generate([GenerationRequest(p, params) for p in prompts]):
        outs[out.request].append(out.sampled.token)
    return outs


async def _disaggregated(
    pair: tuple[WorkerProc, WorkerProc], prompts: list[list[int]], params: SamplingParams
) -> list[list[int]]:
    stubs, channels = WorkerPair.connect(pair[0].address, pair[1].address)

    async def one(i: int, prompt: list[int]) -> list[int]:
        return [e.token_id async for e in generate(stubs, f"eq-{i}", prompt, params, timeout_s=120)]

    try:
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    finally:
        for ch in channels:
            await ch.close()


def test_fifty_concurrent_prompts_match_single_process(
    pair: tuple[WorkerProc, WorkerProc], tiny_model: LingModel
) -> None:
    prompts = _prompts(tiny_model, 50)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    want = _offline(tiny_model, prompts, params)
    got = asyncio.run(_disaggregated(pair, prompts, params))
    assert got == want
    wait_pools_empty(pair[0])
    wait_pools_empty(pair[1])


def test_seeded_sampling_matches_single_process(
    pair: tuple[WorkerProc, WorkerProc], tiny_model: LingModel
) -> None:
    prompts = _prompts(tiny_model, 8)
    params = SamplingParams(
        max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.9, seed=1234, ignore_eos=True
    )
    want = [_offline(tiny_model, [p], params)[0] for p in prompts]
    got = asyncio.run(_disaggregated(pair, prompts, params))
    assert got == want
