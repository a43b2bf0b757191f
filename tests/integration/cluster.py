"""A whole local cluster for tests (control plane + registered workers), on loopback ports
picked by the OS, with helpers to find and kill individual workers."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from control_plane.launcher import Cluster, ClusterSpec
from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc


@contextmanager
def running_cluster(
    model_dir: Path,
    prefill: int,
    decode: int,
    *worker_args: str,
    control_plane_args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    spec = ClusterSpec(
        model_dir,
        prefill,
        decode,
        http_port=0,
        grpc_port=0,
        redis_url=None,
        control_plane_args=control_plane_args,
        worker_args=worker_args,
    )
    cluster = Cluster(spec)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def load_of(address: str, role: str) -> pb.LoadResponse:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.DecodeWorkerStub(ch) if role == "decode" else pb_grpc.PrefillWorkerStub(ch)
        return stub.Load(pb.LoadRequest(), timeout=5)


def assert_pools_empty(address: str, role: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.DecodeWorkerStub(ch) if role == "decode" else pb_grpc.PrefillWorkerStub(ch)
        while True:
            load = stub.Load(pb.LoadRequest(), timeout=5)
            if (
                load.free_pages == load.total_pages
                and load.free_slots == load.total_slots
                and load.integrity_ok
                and load.pending_transfers == 0
                and load.prefix_cache.pinned_blocks == 0
            ):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{role} {address}: pools not empty: {load}")
            time.sleep(0.1)
