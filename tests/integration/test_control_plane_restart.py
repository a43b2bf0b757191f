"""The registry is soft state: a control plane killed and started again on the same port is
whole after one heartbeat round, because workers register again when a heartbeat is unknown."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from control_plane.launcher import _wait_ready
from tests.integration.procs import start_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _control_plane(model_dir: Path, http: int, grpc_port: int) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "duet",
        "control-plane",
        "--model",
        str(model_dir),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc_port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _wait_ready(proc, "control plane")
    return proc


def _health(http: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _seconds_until_healthy(http: int, timeout_s: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if _health(http)[0] == 200:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not healthy within {timeout_s}s: {_health(http)}")


def test_restarted_control_plane_is_whole_after_a_heartbeat_round(tiny_model_dir: Path) -> None:
    http, grpc_port = _free_port(), _free_port()
    cp = _control_plane(tiny_model_dir, http, grpc_port)
    workers = [
        start_worker(role, tiny_model_dir, "--control-plane", f"127.0.0.1:{grpc_port}")
        for role in ("prefill", "decode")
    ]
    try:
        _seconds_until_healthy(http)
        cp.send_signal(signal.SIGKILL)
        cp.wait(timeout=10)
        cp = _control_plane(tiny_model_dir, http, grpc_port)  # a fresh, empty registry
        # Heartbeats every 0.5 s; after a failed call a worker registers again on the next one.
        assert _seconds_until_healthy(http) < 3.0
        assert _health(http)[1]["prefill_workers"] == 1 and _health(http)[1]["decode_workers"] == 1
    finally:
        for w in workers:
            w.stop()
        cp.send_signal(signal.SIGTERM)
        cp.wait(timeout=15)
        if cp.stdout is not None:
            cp.stdout.close()
