"""Each worker serves Prometheus metrics: load gauges, transfer bytes and failures."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

from control_plane.pd_client import WorkerPair, generate
from engine.sampling import SamplingParams
from tests.integration.procs import start_worker, wait_pools_empty


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_workers_export_load_and_transfer_metrics(tiny_model_dir: Path) -> None:
    p_port, d_port = _free_port(), _free_port()
    p = start_worker("prefill", tiny_model_dir, "--metrics-port", str(p_port))
    d = start_worker("decode", tiny_model_dir, "--metrics-port", str(d_port), "--num-pages", "40")
    try:
        before = _scrape(d_port)
        assert before['duet:worker_free_pages{role="decode"}'] == 40

        async def run() -> list[int]:
            pair, channels = WorkerPair.connect(p.address, d.address)
            try:
                params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
                return [e.token_id async for e in generate(pair, "m1", list(range(50, 90)), params)]
            finally:
                for ch in channels:
                    await ch.close()

        assert len(asyncio.run(run())) == 4
        wait_pools_empty(p)
        wait_pools_empty(d)
        sent, received = _scrape(p_port), _scrape(d_port)
        assert sent["duet:transfer_bytes_total"] == received["duet:transfer_bytes_total"] > 0
        assert sent["duet:worker_tokens_total"] == 40 and received["duet:worker_tokens_total"] >= 4
        assert received['duet:worker_free_pages{role="decode"}'] == 40
        assert sent["duet:prefix_cache_lookups_total"] == 1  # 40 tokens: no full block to hit
        assert sent["duet:prefix_cache_computed_tokens_total"] == 40
        assert sent["duet:prefix_cache_pinned_blocks"] == 0
        assert not [name for name in received if name.startswith("duet:prefix_cache")]
    finally:
        p.stop()
        d.stop()
