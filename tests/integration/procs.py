"""Real worker processes on loopback for integration tests: start, wait for the ready line,
inspect, stop. Every wait is bounded."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc

READY_TIMEOUT_S = 90.0


@dataclass
class WorkerProc:
    role: str
    proc: subprocess.Popen[str]
    port: int
    info: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def load(self) -> pb.LoadResponse:
        with grpc.insecure_channel(self.address) as ch:
            stub = (
                pb_grpc.DecodeWorkerStub(ch)
                if self.role == "decode"
                else pb_grpc.PrefillWorkerStub(ch)
            )
            return stub.Load(pb.LoadRequest(), timeout=10)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_worker(
    role: str, model_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> WorkerProc:
    cmd = [
        sys.executable,
        "-m",
        "duet",
        f"{role}-worker",
        "--model",
        str(model_dir),
        "--port",
        "0",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if not os.environ.get("DUET_TEST_WORKER_LOGS") else None,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{role} worker exited with {proc.returncode} before it was ready")
        if ready:
            line = proc.stdout.readline()
            if line.startswith("{"):
                msg = json.loads(line)
                if msg.get("event") == "ready":
                    return WorkerProc(role, proc, int(msg["port"]), msg)
    proc.kill()
    raise TimeoutError(f"{role} worker not ready within {READY_TIMEOUT_S}s")


def wait_pools_empty(worker: WorkerProc, timeout_s: float = 15.0) -> pb.LoadResponse:
    """Polls Load until nothing is held; fails the test with the last Load otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = worker.load()
        empty = (
            load.free_pages == load.total_pages
            and load.free_slots == load.total_slots
            and load.pending_transfers == 0
            and load.running_requests == 0
            and load.queued_requests == 0
            and load.prefix_cache.pinned_blocks == 0
        )
        if empty and load.integrity_ok:
            return load
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker.role} worker pools not back to empty: {load}")
        time.sleep(0.1)
