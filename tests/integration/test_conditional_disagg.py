"""Conditional disaggregation: short prompts prefill on the decode worker (no prefill worker,
no transfer), long ones go through a prefill worker; both give the single-process output."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from engine.model.ling import LingModel
from tests.integration.cluster import assert_pools_empty, load_of, running_cluster
from tests.integration.near_ties import tie_free_prompts

THRESHOLD = 16


def test_short_prompts_prefill_on_the_decode_worker(
    tiny_model_dir: Path, tiny_model: LingModel
) -> None:
    (short, want_short), (long, want_long) = tie_free_prompts(tiny_model, [10, 40], 6, seed=17)

    async def run(cluster, prompt: list[int]) -> list[int]:  # type: ignore[no-untyped-def]
        request = gpb.GenerateRequest(
            token_ids=gpb.TokenIds(ids=prompt),
            sampling=pb.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as ch:
            return [
                r.token_ids[0]
                async for r in gpb_grpc.GenerateStub(ch).Generate(request, timeout=60)
            ]

    args = ("--local-prefill-max-tokens", str(THRESHOLD))
    with running_cluster(tiny_model_dir, 1, 1, control_plane_args=args) as cluster:
        prefill = next(w for w in cluster.workers if w.role == "prefill")
        decode = next(w for w in cluster.workers if w.role == "decode")
        assert asyncio.run(run(cluster, short)) == want_short
        assert load_of(prefill.address, "prefill").completed_requests == 0
        assert asyncio.run(run(cluster, long)) == want_long
        assert load_of(prefill.address, "prefill").completed_requests == 1
        assert load_of(decode.address, "decode").completed_requests == 2
        for w in cluster.workers:
            assert_pools_empty(w.address, w.role)
