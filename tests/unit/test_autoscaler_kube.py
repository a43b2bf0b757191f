"""The autoscaler against a local stand-in for the Kubernetes API, through the real
`kubernetes` client: the scale subresource requests it sends are recorded and checked."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control_plane.autoscaler.kube import DeploymentScaler, api_client
from control_plane.autoscaler.loop import Autoscaler, http_metrics
from control_plane.autoscaler.policy import PolicyConfig, PoolBounds
from duet.cli import main

SCALE_PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")
NS = "serving"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeCluster:
    """Deployments' replica counts, the metrics text, and every API request received."""

    replicas: dict[str, int]
    metrics: str = ""
    requests: list[tuple[str, str, str | None, Any]] = field(default_factory=list)
    fail_next_patch: bool = False

    def scale(self, name: str) -> dict[str, Any]:
        n = self.replicas[name]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": n},
            "status": {"replicas": n, "selector": f"app.kubernetes.io/component={name}"},
        }

    def api_requests(self) -> list[tuple[str, str, str | None, Any]]:
        return [r for r in self.requests if r[1] != "/metrics"]


def _handler(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _target(self) -> str | None:
            match = SCALE_PATH.match(self.path)
            if match and match.group(1) == NS and match.group(2) in cluster.replicas:
                return match.group(2)
            self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            return None

        def do_GET(self) -> None:
            cluster.requests.append(("GET", self.path, None, None))
            if self.path == "/metrics":
                self._send(200, cluster.metrics, "text/plain; version=0.0.4")
            elif (name := self._target()) is not None:
                self._send(200, cluster.scale(name))

        def do_PATCH(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            ctype = self.headers.get("Content-Type")
            cluster.requests.append(("PATCH", self.path, ctype, body))
            if (name := self._target()) is None:
                return
            if cluster.fail_next_patch:
                cluster.fail_next_patch = False
                self._send(500, {"kind": "Status", "code": 500, "message": "etcd timeout"})
                return
            if ctype != "application/merge-patch+json":
                self._send(415, {"kind": "Status", "code": 415})
                return
            cluster.replicas[name] = int(body["spec"]["replicas"])
            self._send(200, cluster.scale(name))

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, str]]:
    state = FakeCluster(replicas={"r1-prefill": 1, "r1-decode": 4})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def metrics(queued: float, running: float, free: float, decode_workers: int = 4) -> str:
    return (
        f'duet:pool_workers{{pool="prefill"}} 1\n'
        f'duet:pool_workers{{pool="decode"}} {decode_workers}\n'
        f'duet:pool_queued_tokens{{pool="prefill"}} {queued}\n'
        f'duet:pool_running_requests{{pool="decode"}} {running}\n'
        f'duet:pool_free_slots{{pool="decode"}} {free}\n'
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _autoscaler(url: str, clock: Clock) -> Autoscaler:
    config = PolicyConfig(
        prefill=PoolBounds(1, 4),
        decode=PoolBounds(1, 8),
        cooldown_s=60.0,
        prefill_tokens_per_worker=1000.0,
        scale_down_after=2,
    )
    scaler = DeploymentScaler(api_client(url), NS, timeout_s=5.0)
    return Autoscaler(scaler, http_metrics(f"{url}/metrics"), config, "r1", clock=clock)


def _path(name: str) -> str:
    return f"/apis/apps/v1/namespaces/{NS}/deployments/{name}/scale"


def test_scale_up_scale_down_and_quiet_cooldown(cluster: tuple[FakeCluster, str]) -> None:
    state, url = cluster
    clock = Clock()
    autoscaler = _autoscaler(url, clock)
    merge = "application/merge-patch+json"

    # Tick 1: 2500 queued tokens need 3 prefill workers; decode (2 of 64 slots) is idle once.
    state.metrics = metrics(queued=2500, running=2, free=62)
    decisions = autoscaler.tick()
    assert state.api_requests() == [
        ("GET", _path("r1-prefill"), None, None),
        ("PATCH", _path("r1-prefill"), merge, {"spec": {"replicas": 3}}),
        ("GET", _path("r1-decode"), None, None),
    ]
    assert state.replicas == {"r1-prefill": 3, "r1-decode": 4}
    assert decisions["decode"].state.idle_streak == 1

    # Tick 2: prefill is cooling down (not even read); decode idle twice: one replica fewer.
    state.requests.clear()
    clock.now += 15
    state.metrics = metrics(queued=90_000, running=2, free=62)
    autoscaler.tick()
    assert state.api_requests() == [
        ("GET", _path("r1-decode"), None, None),
        ("PATCH", _path("r1-decode"), merge, {"spec": {"replicas": 3}}),
    ]

    # Tick 3: both pools in cooldown, whatever the load: nothing is sent to the API.
    state.requests.clear()
    clock.now += 15
    state.metrics = metrics(queued=90_000, running=60, free=0)
    assert autoscaler.tick() == {}
    assert state.api_requests() == []
    assert [r[1] for r in state.requests] == ["/metrics"]

    # After the cooldown the queue is served again, from the live replica count.
    state.requests.clear()
    clock.now += 60
    state.replicas["r1-prefill"] = 2  # someone ran `kubectl scale` meanwhile
    autoscaler.tick()
    patches = [r for r in state.api_requests() if r[0] == "PATCH"]
    assert patches[0] == ("PATCH", _path("r1-prefill"), merge, {"spec": {"replicas": 4}})
    # 60 running at 15 slots per worker and a 0.8 target need 5 decode workers.
    assert patches[1] == ("PATCH", _path("r1-decode"), merge, {"spec": {"replicas": 5}})


def test_a_failed_patch_is_retried_on_the_next_tick(cluster: tuple[FakeCluster, str]) -> None:
    state, url = cluster
    clock = Clock()
    autoscaler = _autoscaler(url, clock)
    state.metrics = metrics(queued=3000, running=60, free=4)
    state.fail_next_patch = True
    decisions = autoscaler.tick()
    assert "prefill" not in decisions and decisions["decode"].replicas == 5
    assert state.replicas == {"r1-prefill": 1, "r1-decode": 5}
    clock.now += 1  # prefill never changed, so it is not in cooldown
    autoscaler.tick()
    assert state.replicas["r1-prefill"] == 3


def test_an_unreachable_metrics_endpoint_holds(cluster: tuple[FakeCluster, str]) -> None:
    state, url = cluster
    scaler = DeploymentScaler(api_client(url), NS, timeout_s=5.0)
    config = PolicyConfig(prefill=PoolBounds(1, 4), decode=PoolBounds(1, 8))
    autoscaler = Autoscaler(scaler, http_metrics("http://127.0.0.1:9/metrics", 2.0), config, "r1")
    assert autoscaler.tick() == {}
    assert state.requests == []


def test_cli_once_scales_through_the_duet_command(
    cluster: tuple[FakeCluster, str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state, url = cluster
    state.metrics = metrics(queued=0, running=64, free=0)
    args = ["autoscaler", "--namespace", NS, "--release", "r1", "--metrics-url", f"{url}/metrics"]
    args += ["--kube-host", url, "--once", "--max-decode", "8"]
    assert main(args) == 0
    assert state.replicas == {"r1-prefill": 1, "r1-decode": 5}
    patches = [r for r in state.api_requests() if r[0] == "PATCH"]
    assert patches == [
        ("PATCH", _path("r1-decode"), "application/merge-patch+json", {"spec": {"replicas": 5}})
    ]
    state.metrics = metrics(queued=40_000, running=80, free=0, decode_workers=5)
    with caplog.at_level(logging.INFO, logger="duet.autoscaler"):
        assert main([*args, "--dry-run"]) == 0
    assert "r1-prefill: 1 -> 3" in caplog.text and "r1-decode: 5 -> 7" in caplog.text
    assert [r[0] for r in state.api_requests()].count("PATCH") == 1
    assert state.replicas == {"r1-prefill": 1, "r1-decode": 5}
    with pytest.raises(SystemExit):
        main(["autoscaler", "--help"])
    assert "duet:pool_free_slots" in capsys.readouterr().out


def test_the_loop_runs_until_sigterm(cluster: tuple[FakeCluster, str]) -> None:
    state, url = cluster
    state.metrics = metrics(queued=2500, running=2, free=62)
    args = ["autoscaler", "--namespace", NS, "--release", "r1", "--metrics-url", f"{url}/metrics"]
    args += ["--kube-host", url, "--interval", "0.2", "--cooldown", "600"]
    args += ["--prefill-tokens-per-worker", "1000"]
    proc = subprocess.Popen([sys.executable, "-m", "duet", *args], cwd=REPO, text=True)
    try:
        deadline = time.monotonic() + 30
        while state.replicas["r1-prefill"] != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.replicas["r1-prefill"] == 3
        time.sleep(0.5)  # a few more ticks: the cooldown keeps prefill from being read again
        prefill = [r for r in state.api_requests() if r[1] == _path("r1-prefill")]
        assert [r[0] for r in prefill] == ["GET", "PATCH"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
