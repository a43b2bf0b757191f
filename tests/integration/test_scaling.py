"""Scaling as `kubectl scale` does it, at process level: new workers register themselves and
receive traffic; a worker sent SIGTERM mid-load drains (no request fails), deregisters, and
exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import grpc

from control_plane.launcher import Cluster
from duet.v1 import generate_pb2 as gpb
from duet.v1 import generate_pb2_grpc as gpb_grpc
from duet.v1 import worker_pb2 as pb
from tests.integration.cluster import assert_pools_empty, load_of, running_cluster


class Load:
    """A bounded background load: `clients` concurrent loops of short requests until stopped."""

    def __init__(self, cluster: Cluster, clients: int = 6) -> None:
        self.cluster, self.clients = cluster, clients
        self.ok, self.failures = 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _client(self, stub: gpb_grpc.GenerateStub, i: int) -> None:
        n = 0
        while not self._stop.is_set() and n < 500:  # bounded
            n += 1
            request = gpb.GenerateRequest(
                token_ids=gpb.TokenIds(ids=[(i * 31 + n * 7 + k) % 1900 for k in range(12)]),
                sampling=pb.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
            )
            try:
                replies = [r async for r in stub.Generate(request, timeout=60)]
                assert replies[-1].finish_reason == "length"
                self.ok += 1
            except (grpc.aio.AioRpcError, AssertionError) as err:
                self.failures.append(repr(err))

    async def _main(self) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.cluster.grpc_port}") as ch:
            stub = gpb_grpc.GenerateStub(ch)
            await asyncio.gather(*(self._client(stub, i) for i in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _wait_until(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_scale_up_then_drain_one_worker_under_load(tiny_model_dir: Path) -> None:
    with running_cluster(tiny_model_dir, 1, 1) as cluster:
        with Load(cluster) as load:
            _wait_until(lambda: load.ok >= 5)
            new_p, new_d = cluster.add_worker("prefill"), cluster.add_worker("decode")
            cluster.wait_healthy()
            _wait_until(lambda: load_of(new_p.address, "prefill").completed_requests >= 2)
            _wait_until(lambda: load_of(new_d.address, "decode").completed_requests >= 2)
            # SIGTERM the original workers mid-load: each drains, deregisters and exits 0.
            for role, new in (("decode", new_d), ("prefill", new_p)):
                old = next(w for w in cluster.workers if w.role == role and w is not new)
                before = load.ok
                old.proc.send_signal(signal.SIGTERM)
                assert old.proc.wait(timeout=60) == 0
                _wait_until(lambda before=before: load.ok >= before + 10)
        assert load.failures == []
        for w in (new_p, new_d):
            assert_pools_empty(w.address, w.role)


def test_new_workers_drain_to_empty(tiny_model_dir: Path) -> None:
    with running_cluster(tiny_model_dir, 1, 1) as cluster:
        with Load(cluster, clients=3) as load:
            _wait_until(lambda: load.ok >= 6)
        assert load.failures == []
        for w in cluster.workers:
            assert_pools_empty(w.address, w.role)
