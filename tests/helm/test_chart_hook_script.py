"""The `helm test` pod's script, taken from the rendered manifest and run against a local
HTTP server that answers like the gateway would (or would not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from chart_render import Renderer, of_kind

OK_BODY = {"choices": [{"index": 0, "text": " Ada", "finish_reason": "length"}], "usage": {}}


@dataclass
class Gateway:
    """Scripted answers for POST /v1/completions, one per request (the last one repeats)."""

    answers: list[tuple[int, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    def next_answer(self) -> tuple[int, Any]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def _handler(gw: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            gw.requests.append((self.path, dict(self.headers), None))
            self._reply(200, {"object": "list", "data": [{"id": "ling-tiny"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            gw.requests.append((self.path, dict(self.headers), body))
            self._reply(*gw.next_answer())

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def gateway() -> Iterator[tuple[Gateway, str]]:
    gw = Gateway()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gw))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gw, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def hook_script(render: Renderer) -> str:
    (pod,) = of_kind(render({}), "Pod")
    return str(pod["spec"]["containers"][0]["args"][0])


def _run(script: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "DUET_GATEWAY_URL": url, "DUET_TEST_TIMEOUT_SECONDS": "6", **env}
    return subprocess.run(
        [sys.executable, "-c", script], env=full_env, capture_output=True, text=True, timeout=30
    )


def test_passes_on_200_with_text(gateway: tuple[Gateway, str], hook_script: str) -> None:
    gw, url = gateway
    gw.answers = [(200, OK_BODY)]
    result = _run(hook_script, url, DUET_API_KEYS="key-a,key-b")
    assert result.returncode == 0, result.stderr
    assert "OK model=ling-tiny" in result.stdout
    path, headers, body = gw.requests[-1]
    assert path == "/v1/completions" and body["model"] == "ling-tiny" and body["max_tokens"] == 8
    assert headers["Authorization"] == "Bearer key-a"


def test_waits_through_503_until_the_pools_are_up(
    gateway: tuple[Gateway, str], hook_script: str
) -> None:
    gw, url = gateway
    gw.answers = [(503, {"error": {"message": "no decode worker"}}), (200, OK_BODY)]
    result = _run(hook_script, url)
    assert result.returncode == 0, result.stderr
    assert [r[0] for r in gw.requests].count("/v1/completions") == 2


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, {"error": {"message": "boom"}}, "HTTP 500"),
        (400, {"error": {"message": "bad"}}, "HTTP 400"),
        (200, {"choices": []}, "no non-empty choice"),
        (200, {"choices": [{"index": 0, "text": ""}]}, "no non-empty choice"),
    ],
)
def test_fails_without_a_non_empty_choice(
    gateway: tuple[Gateway, str], hook_script: str, status: int, body: Any, message: str
) -> None:
    gw, url = gateway
    gw.answers = [(status, body)]
    result = _run(hook_script, url)
    assert result.returncode == 1
    assert message in result.stderr


def test_fails_when_the_gateway_never_answers(hook_script: str) -> None:
    result = _run(hook_script, "http://127.0.0.1:9", DUET_TEST_TIMEOUT_SECONDS="1")
    assert result.returncode == 1
    assert "FAIL GET /v1/models: HTTP 0" in result.stderr
