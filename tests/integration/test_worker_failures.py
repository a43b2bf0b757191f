"""Failures between the prefill and the decode worker: nothing hangs, nothing corrupted is
returned, and both workers' pools are back to empty after every scenario."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from duet.v1 import worker_pb2 as pb
from engine.sampling import SamplingParams
from engine.transfer.tcp_sender import CORRUPT_ENV
from prefill_worker.outbound import SEND_DELAY_ENV
from tests.integration.procs import WorkerProc, start_worker, wait_pools_empty
from tests.integration.scenario import collect, prefill_request, reserve_request, run_with_stubs

PROMPT = list(range(100, 170))
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
SLOW_SEND = {SEND_DELAY_ENV: "0.4"}  # 9 tensors: the transfer takes ~3.6 s


@pytest.fixture()
def workers(
    request: pytest.FixtureRequest, tiny_model_dir: Path
) -> Iterator[tuple[WorkerProc, WorkerProc]]:
    prefill_env = getattr(request, "param", {})
    p = start_worker("prefill", tiny_model_dir, env=prefill_env)
    d = start_worker("decode", tiny_model_dir, "--num-pages", "64", "--lease-s", "3")
    try:
        yield p, d
    finally:
        p.stop()
        d.stop()


@pytest.mark.parametrize("workers", [SLOW_SEND], indirect=True)
def test_prefill_killed_mid_transfer_frees_the_reservation(
    workers: tuple[WorkerProc, WorkerProc],
) -> None:
    p, d = workers

    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        reply = await dstub.Reserve(reserve_request("k1", PROMPT, GREEDY, lease_s=3.0), timeout=10)
        stream = dstub.Stream(pb.StreamRequest(request_id="k1"), timeout=20)
        call = pstub.Prefill(prefill_request("k1", PROMPT, reply.destination), timeout=20)
        await asyncio.sleep(1.2)  # some layers sent, not all
        assert d.load().pending_transfers == 1
        p.kill9()
        events, code = await collect(stream)
        call.cancel()
        return events, code

    started = time.monotonic()
    events, code = run_with_stubs(p.address, d.address, body)
    assert events == [] and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 10
    wait_pools_empty(d, timeout_s=5)


@pytest.mark.parametrize("workers", [SLOW_SEND], indirect=True)
def test_decode_killed_mid_transfer_prefill_aborts_and_frees(
    workers: tuple[WorkerProc, WorkerProc],
) -> None:
    p, d = workers

    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        reply = await dstub.Reserve(reserve_request("k2", PROMPT, GREEDY), timeout=10)
        call = pstub.Prefill(
            prefill_request("k2", PROMPT, reply.destination, deadline_s=15), timeout=20
        )
        await asyncio.sleep(1.2)
        d.kill9()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        return err.value.code()

    code = run_with_stubs(p.address, d.address, body)
    assert code == grpc.StatusCode.UNAVAILABLE
    wait_pools_empty(p, timeout_s=5)


@pytest.mark.parametrize("workers", [{CORRUPT_ENV: "latent.3"}], indirect=True)
def test_corrupted_payload_fails_cleanly(workers: tuple[WorkerProc, WorkerProc]) -> None:
    p, d = workers

    async def body(pstub, dstub):  # type: ignore[no-untyped-def]
        reply = await dstub.Reserve(reserve_request("c1", PROMPT, GREEDY), timeout=10)
        stream = dstub.Stream(pb.StreamRequest(request_id="c1"), timeout=20)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pstub.Prefill(prefill_request("c1", PROMPT, reply.destination), timeout=20)
        events, code = await collect(stream)
        return err.value, events, code

    prefill_err, events, code = run_with_stubs(p.address, d.address, body)
    assert (
        prefill_err.code() == grpc.StatusCode.DATA_LOSS
        and "checksum" in prefill_err.details().lower()
    )
    assert events == [] and code == grpc.StatusCode.DATA_LOSS  # an error, never tokens
    wait_pools_empty(p)
    wait_pools_empty(d)
