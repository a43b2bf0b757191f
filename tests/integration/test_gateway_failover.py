"""The control plane under worker failure (2 prefill + 2 decode, real processes): a decode
worker killed mid-stream is invisible to the client (the stream is migrated and the greedy text
equals an undisturbed run); a killed prefill worker is retried through the other. Pools of the
surviving workers are back to empty after each scenario."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_plane.launcher import Cluster
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from engine.model.ling import LingModel
from prefill_worker.outbound import SEND_DELAY_ENV
from tests.integration.cluster import assert_pools_empty, kill9, load_of, running_cluster
from tests.integration.near_ties import tie_free_prompts

STEPS = 48


@pytest.fixture(scope="module")
def case(tiny_model: LingModel) -> tuple[list[int], list[int]]:
    return tie_free_prompts(tiny_model, [37], STEPS, seed=21)[0]


def _request(prompt: list[int], steps: int = STEPS) -> gpb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=steps, temperature=0.0, ignore_eos=True)
    return gpb.GenerateRequest(token_ids=gpb.TokenIds(ids=prompt), sampling=sampling)


async def _stream(
    cluster: Cluster, request: gpb.GenerateRequest, on_token=None
) -> list[gpb.GenerateResponse]:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as ch:
        out = []
        async for r in gpb_grpc.GenerateStub(ch).Generate(request, timeout=120):
            out.append(r)
            if on_token is not None:
                await asyncio.to_thread(on_token, len(out))
        return out


@pytest.fixture()
def cluster(tiny_model_dir: Path) -> Iterator[Cluster]:
    with running_cluster(tiny_model_dir, 2, 2) as c:
        yield c


def _survivors_empty(cluster: Cluster) -> None:
    for w in cluster.workers:
        if w.proc.poll() is None:
            assert_pools_empty(w.address, w.role)


def test_decode_killed_mid_stream_is_migrated(
    cluster: Cluster, case: tuple[list[int], list[int]]
) -> None:
    prompt, want = case
    killed: list[str] = []

    def on_token(n: int) -> None:
        if n == 10 and not killed:  # kill the decode worker that is streaming this request
            for w in cluster.workers:
                if w.role == "decode" and load_of(w.address, "decode").running_requests:
                    kill9(w.proc)
                    killed.append(w.address)

    out = asyncio.run(_stream(cluster, _request(prompt), on_token))
    assert killed, "no decode worker was running the request"
    assert [r.token_ids[0] for r in out] == want
    assert out[-1].finish_reason == "length" and out[-1].completion_tokens == STEPS
    _survivors_empty(cluster)


def test_prefill_killed_is_retried_through_the_other(
    tiny_model_dir: Path, case: tuple[list[int], list[int]]
) -> None:
    prompt, want = case
    # Slow transfers so the kill lands while the prefill is sending.
    import os

    os.environ[SEND_DELAY_ENV] = "0.3"
    try:
        with running_cluster(tiny_model_dir, 2, 2) as cluster:
            os.environ.pop(SEND_DELAY_ENV)
            result: list[list[gpb.GenerateResponse]] = []
            thread = threading.Thread(
                target=lambda: result.append(asyncio.run(_stream(cluster, _request(prompt, 6))))
            )
            thread.start()
            deadline = time.monotonic() + 20
            victim = None
            while victim is None and time.monotonic() < deadline:
                for w in cluster.workers:
                    if w.role == "prefill" and load_of(w.address, "prefill").pending_transfers:
                        victim = w
                time.sleep(0.05)
            assert victim is not None, "no prefill worker was sending"
            kill9(victim.proc)
            thread.join(timeout=120)
            assert result and [r.token_ids[0] for r in result[0]] == want[:6]
            _survivors_empty(cluster)
    finally:
        os.environ.pop(SEND_DELAY_ENV, None)


def test_error_after_streaming_started_is_sent_in_the_stream(
    tiny_model_dir: Path, case: tuple[list[int], list[int]]
) -> None:
    """With its only decode worker killed mid-stream and no other to migrate to, the client
    gets the tokens so far, then an error event and [DONE]; the connection closes cleanly."""
    import json

    import aiohttp

    prompt, _ = case

    async def main(cluster: Cluster) -> list[str]:
        body = {
            "model": "ling-tiny",
            "prompt": prompt,
            "max_tokens": STEPS,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
        url = f"http://127.0.0.1:{cluster.http_port}/v1/completions"
        lines: list[str] = []
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as r,
        ):
            async for raw in r.content:
                line = raw.decode().strip()
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 5:
                    decode = next(w for w in cluster.workers if w.role == "decode")
                    await asyncio.to_thread(kill9, decode.proc)
        return lines

    with running_cluster(tiny_model_dir, 1, 1) as cluster:
        lines = asyncio.run(main(cluster))
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error"]["code"] == "service_unavailable"
    assert "no healthy decode worker" in error["error"]["message"]
    texts = [json.loads(x.removeprefix("data: ")) for x in lines[:-2]]
    assert len(texts) >= 5 and all("choices" in t for t in texts)
