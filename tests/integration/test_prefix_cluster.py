"""Prefix-aware routing on a whole local cluster (2 prefill + 1 decode, real Redis): a repeated
prompt goes to the prefill worker that holds its prefix, and a Redis outage in the middle of
a load fails no request, shows as a degraded cache (not a down service), and hits resume once
Redis is back (the workers republish what they hold)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import torch

from control_plane.launcher import Cluster, ClusterSpec
from control_plane.prefix_index import PrefixIndex
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from engine.cache.block_hash import block_hashes, model_fingerprint
from tests.integration.cluster import assert_pools_empty, load_of
from tests.redis_server import RedisServer

BS = 64
WORKER_ARGS = ("--prefix-snapshots", "every", "--prefill-chunk", "96")


@contextmanager
def _cluster(model_dir: Path, redis_url: str | None, prefill: int = 2) -> Iterator[Cluster]:
    spec = ClusterSpec(
        model_dir,
        prefill,
        1,
        http_port=0,
        grpc_port=0,
        redis_url=redis_url,
        worker_args=WORKER_ARGS,
    )
    cluster = Cluster(spec)
    cluster.start()
    try:
        yield cluster
        for w in cluster.workers:
            assert_pools_empty(w.address, w.role)
    finally:
        cluster.stop()


def _generate(cluster: Cluster, prompt: list[int]) -> int:
    """Runs the prompt through the gateway's gRPC API; returns the reply's cached_tokens."""
    sampling = pb.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    request = gpb.GenerateRequest(token_ids=gpb.TokenIds(ids=prompt), sampling=sampling)

    async def main() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.grpc_port}") as ch:
            stream = gpb_grpc.GenerateStub(ch).Generate(request, timeout=60)
            replies = [r async for r in stream]
        assert len(replies) == 4 and replies[-1].finish_reason == "length"
        return replies[-1].cached_tokens

    return asyncio.run(main())


def _chat(cluster: Cluster, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": "ling-tiny", "messages": messages, "max_tokens": 6, "temperature": 0}
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.http_port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.loads(reply.read())


def _prefill_hits(cluster: Cluster) -> dict[str, int]:
    return {
        w.address: load_of(w.address, "prefill").prefix_cache.hits
        for w in cluster.workers
        if w.role == "prefill"
    }


def _wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _holder(cluster: Cluster, model_dir: Path, prompt: list[int]) -> str | None:
    """The address of the worker the index names for the prompt's full chain, if any."""
    assert cluster.redis_url is not None
    index = PrefixIndex(cluster.redis_url, model_fingerprint(model_dir))
    try:
        hashes = block_hashes(prompt, BS, index.fingerprint)
        best = index.lookup(hashes).best()
    finally:
        index.close()
    if best is None or best[1] < len(hashes):
        return None
    port = best[0].rsplit("-", 1)[1]  # default worker ids are prefill-<host>-<port>
    return f"127.0.0.1:{port}"


def _prompts(seed: int, n: int, head: list[int] | None = None) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    head = head or []
    return [head + torch.randint(3, 2000, (9,), generator=gen).tolist() for _ in range(n)]


def test_a_repeated_prefix_goes_to_the_worker_that_holds_it(tiny_model_dir: Path) -> None:
    shared = torch.randint(3, 2000, (4 * BS,), generator=torch.Generator().manual_seed(1)).tolist()
    with _cluster(tiny_model_dir, None) as cluster:
        _generate(cluster, [*shared, 5, 6, 7])
        _wait_until(lambda: _holder(cluster, tiny_model_dir, shared) is not None, "the index")
        holder = _holder(cluster, tiny_model_dir, shared)
        before = _prefill_hits(cluster)
        for prompt in _prompts(2, 4, shared):
            assert _generate(cluster, prompt) == 4 * BS  # usage reports the cached prefix
        after = _prefill_hits(cluster)
        gained = {a: after[a] - before[a] for a in after}
        assert gained[holder] == 4, gained  # type: ignore[index]
        assert sum(gained.values()) == 4, gained


def test_redis_outage_mid_load_fails_nothing_and_hits_resume(tiny_model_dir: Path) -> None:
    server = RedisServer()
    server.start()
    shared = torch.randint(3, 2000, (3 * BS,), generator=torch.Generator().manual_seed(5)).tolist()
    try:
        with _cluster(tiny_model_dir, server.url) as cluster:
            _generate(cluster, [*shared, 1, 2])
            _wait_until(lambda: _holder(cluster, tiny_model_dir, shared) is not None, "the index")
            failures: list[BaseException] = []
            done = threading.Event()

            def load() -> None:  # a bounded stream of requests during the outage
                try:
                    for prompt in _prompts(3, 24, shared):
                        _generate(cluster, prompt)
                except BaseException as exc:
                    failures.append(exc)
                finally:
                    done.set()

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(0.5)
            server.stop()
            _wait_until(lambda: cluster.health()[1].get("prefix_cache") == "degraded", "degraded")
            status, body = cluster.health()
            assert status == 200 and body.get("status") != "down", body
            time.sleep(1.0)
            server.start()
            _wait_until(lambda: cluster.health()[1].get("prefix_cache") == "ok", "recovery", 30)
            thread.join(timeout=120)
            assert done.is_set() and not failures, failures
            _wait_until(
                lambda: _holder(cluster, tiny_model_dir, shared) is not None, "republish", 30
            )
            # Both workers may hold the prefix by now (requests during the outage went to
            # either): each request must be routed to a holder and reuse the whole prefix.
            for prompt in _prompts(4, 3, shared):
                assert _generate(cluster, prompt) == 3 * BS
    finally:
        server.stop()


def test_a_second_chat_turn_reports_its_cached_prompt_tokens(tiny_model_dir: Path) -> None:
    system = {"role": "system", "content": "You answer briefly and politely. " * 24}
    turn1 = [system, {"role": "user", "content": "Name a colour."}]
    # One prefill worker: the turns meet its cache whatever the index has published so far.
    with _cluster(tiny_model_dir, None, prefill=1) as cluster:
        first = _chat(cluster, turn1)
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        answer = first["choices"][0]["message"]["content"]
        turn2 = [*turn1, {"role": "assistant", "content": answer}]
        turn2.append({"role": "user", "content": "And another one?"})
        second = _chat(cluster, turn2)
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        prompt1 = first["usage"]["prompt_tokens"]
        assert cached > 0 and cached % BS == 0 and cached <= prompt1, second["usage"]
