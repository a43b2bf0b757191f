"""Request lifecycle on a live prefill/decode pair: duplicate commits, aborts, disconnects,
lease expiry, bad input, preemption. Pools are back to empty after each scenario."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_plane.pd_client import StageError, WorkerPair, generate
from duet.v1 import worker_pb2 as pb
from engine.generation import GenerationRequest, OfflineEngine
from engine.model.ling import LingModel
from engine.sampling import SamplingParams
from tests.integration.near_ties import tie_free_prompts
from tests.integration.procs import WorkerProc, start_worker, wait_pools_empty
from tests.integration.scenario import collect, prefill_request, reserve_request, run_with_stubs

PROMPT = list(range(200, 240))
LONG = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)


def _addresses(pair: tuple[WorkerProc, WorkerProc]) -> tuple[str, str]:
    return pair[0].address, pair[1].address


def test_duplicate_commit_with_old_epoch_is_rejected(pair: tuple[WorkerProc, WorkerProc]) -> None:
    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
        reply = await dstub.Reserve(reserve_request("dup", PROMPT, params), timeout=10)
        stream = dstub.Stream(pb.StreamRequest(request_id="dup"), timeout=30)
        await pstub.Prefill(prefill_request("dup", PROMPT, reply.destination), timeout=30)
        events, code = await collect(stream)
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the same descriptor again
            await pstub.Prefill(prefill_request("dup", PROMPT, reply.destination), timeout=30)
        return events, code, err.value

    events, code, err = run_with_stubs(*_addresses(pair), body)
    assert code == grpc.StatusCode.OK and len(events) == 3
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "StaleEpoch" in err.details()
    wait_pools_empty(pair[0])
    wait_pools_empty(pair[1])


def test_abort_mid_decode_frees_pages_and_slot(pair: tuple[WorkerProc, WorkerProc]) -> None:
    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        reply = await dstub.Reserve(reserve_request("ab", PROMPT, LONG), timeout=10)
        stream = dstub.Stream(pb.StreamRequest(request_id="ab"), timeout=60)
        await pstub.Prefill(prefill_request("ab", PROMPT, reply.destination), timeout=30)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                assert (await dstub.Abort(pb.AbortRequest(request_id="ab"), timeout=5)).found
                break
        rest, code = await collect(stream)
        return seen + len(rest), code

    seen, code = run_with_stubs(*_addresses(pair), body)
    assert seen < LONG.max_tokens and code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)
    wait_pools_empty(pair[1])


def test_client_disconnect_mid_stream_frees_everything(pair: tuple[WorkerProc, WorkerProc]) -> None:
    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        reply = await dstub.Reserve(reserve_request("dc", PROMPT, LONG), timeout=10)
        stream = dstub.Stream(pb.StreamRequest(request_id="dc"), timeout=60)
        await pstub.Prefill(prefill_request("dc", PROMPT, reply.destination), timeout=30)
        async for _ in stream:
            break
        stream.cancel()

    run_with_stubs(*_addresses(pair), body)
    wait_pools_empty(pair[1])


def test_reservation_without_prefill_expires(pair: tuple[WorkerProc, WorkerProc]) -> None:
    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        await dstub.Reserve(reserve_request("lease", PROMPT, LONG, lease_s=1.0), timeout=10)
        held = await dstub.Load(pb.LoadRequest(), timeout=5)
        events, code = await collect(dstub.Stream(pb.StreamRequest(request_id="lease"), timeout=10))
        return held, events, code

    held, events, code = run_with_stubs(*_addresses(pair), body)
    assert held.free_slots == held.total_slots - 1 and held.pending_transfers == 1
    assert events == [] and code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_pools_empty(pair[1])


@pytest.mark.parametrize(
    ("prompt", "params", "where"),
    [
        ([], SamplingParams(), "decode"),
        ([1, 2], SamplingParams(), "prefill-bad-descriptor"),
        ([10**6], SamplingParams(), "prefill"),
    ],
)
def test_bad_input_is_invalid_argument(
    pair: tuple[WorkerProc, WorkerProc], prompt: list[int], params: SamplingParams, where: str
) -> None:
    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if where == "decode":
                await dstub.Reserve(reserve_request("bad", prompt, params), timeout=10)
            elif where == "prefill-bad-descriptor":
                await pstub.Prefill(
                    prefill_request("bad", prompt, pb.TransferDescriptor()), timeout=10
                )
            else:
                reply = await dstub.Reserve(reserve_request("bad", prompt, params), timeout=10)
                try:
                    await pstub.Prefill(
                        prefill_request("bad", prompt, reply.destination), timeout=10
                    )
                finally:
                    await dstub.Abort(pb.AbortRequest(request_id="bad"), timeout=5)
        return err.value.code()

    assert run_with_stubs(*_addresses(pair), body) == grpc.StatusCode.INVALID_ARGUMENT
    wait_pools_empty(pair[0])
    wait_pools_empty(pair[1])


@pytest.fixture()
def small_decode(tiny_model_dir: Path) -> Iterator[tuple[WorkerProc, WorkerProc]]:
    p = start_worker("prefill", tiny_model_dir)
    d = start_worker("decode", tiny_model_dir, "--num-pages", "12", "--page-size", "16")
    try:
        yield p, d
    finally:
        p.stop()
        d.stop()


def test_out_of_pages_preempts_and_resubmission_completes(
    small_decode: tuple[WorkerProc, WorkerProc], tiny_model: LingModel
) -> None:
    """4 requests that each grow to 4 pages on a 12-page pool: some are preempted (handed back)
    and, re-prefilled with prompt + tokens so far, finish with the single-process output."""
    steps = 40
    cases = tie_free_prompts(tiny_model, [20, 21, 22, 23], steps, seed=5)
    params = SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True)
    stubs_addr = _addresses(small_decode)
    preemptions = 0

    async def one(i: int, prompt: list[int]) -> list[int]:
        nonlocal preemptions
        stubs, channels = WorkerPair.connect(*stubs_addr)
        tokens: list[int] = []
        try:
            for attempt in range(200):  # bounded: preemptions plus waits for free pages
                left = steps - len(tokens)
                remaining = SamplingParams(max_tokens=left, temperature=0.0, ignore_eos=True)
                rid = f"pre-{i}-{attempt}"
                try:
                    async for e in generate(stubs, rid, prompt + tokens, remaining, timeout_s=120):
                        if e.finish_reason == "preempted":
                            preemptions += 1
                            break
                        tokens.append(e.token_id)
                except StageError as err:  # no room to reserve yet: back off
                    if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    await asyncio.sleep(0.1)
                if len(tokens) == steps:
                    return tokens
            raise AssertionError("not finished after 200 attempts")
        finally:
            for ch in channels:
                await ch.close()

    async def all_requests() -> list[list[int]]:
        return await asyncio.gather(*(one(i, p) for i, (p, _) in enumerate(cases)))

    got = asyncio.run(all_requests())
    assert got == [cont for _, cont in cases]
    assert preemptions > 0, "the pool was large enough: the scenario did not exercise preemption"
    offline = OfflineEngine(tiny_model, num_pages=64, num_slots=4)
    want = [
        [o.sampled.token for o in offline.generate([GenerationRequest(p, params)])]
        for p, _ in cases
    ]
    assert got == want
    wait_pools_empty(small_decode[0])
    wait_pools_empty(small_decode[1])


def test_health_and_reflection_are_served(pair: tuple[WorkerProc, WorkerProc]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for worker, service in ((pair[0], "duet.v1.PrefillWorker"), (pair[1], "duet.v1.DecodeWorker")):
        with grpc.insecure_channel(worker.address) as ch:
            for name in ("", service):
                reply = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=5
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([request]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert service in names and "grpc.health.v1.Health" in names
