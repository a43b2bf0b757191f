"""The prefill worker's engine resumes from a cached prefix: it computes only the suffix and
sends the same caches (all latents, final states, last hidden state) as a full prefill."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.model.ling import LingModel
from engine.runner import ModelRunner, PrefillItem
from engine.transfer.tcp import TcpReceiver
from engine.transfer_layout import expected_tensors
from engine.worker_config import WorkerConfig
from prefill_worker.engine import CachedPrefix, PrefillEngine

PROMPT = list(range(300, 370))
CUT = 32


def _prefix(model: LingModel) -> CachedPrefix:
    runner = ModelRunner(model, num_pages=16, page_size=16, num_slots=1)
    seq = runner.new_sequence(len(PROMPT))
    out = runner.prefill_chunked([PrefillItem(seq, PROMPT, snapshot_at=(CUT,))], chunk_tokens=CUT)
    prefix = CachedPrefix(runner.read_latents(seq)[:, :CUT], out.snapshots[(0, CUT)])
    runner.release(seq)
    return prefix


def test_resume_sends_the_same_caches(tiny_model_dir: Path, tiny_model: LingModel) -> None:
    buffers: dict[tuple[str, str], torch.Tensor] = {}
    expected = expected_tensors(tiny_model.cfg, len(PROMPT), tiny_model.dtype)
    shapes = {e.name: e for e in expected}

    def destination(request_id: str, name: str) -> torch.Tensor:
        e = shapes[name]
        return buffers.setdefault((request_id, name), torch.empty(e.shape, dtype=e.dtype))

    receiver = TcpReceiver(destination, on_expired=lambda _rid: None)
    engine = PrefillEngine(
        WorkerConfig(role="prefill", model_dir=tiny_model_dir, prefill_chunk=16), tiny_model
    )
    try:
        results = {}
        for rid, prefix in (("full", None), ("resumed", _prefix(tiny_model))):
            descriptor = receiver.reserve(rid, expected, 30.0)
            results[rid] = engine.submit(rid, PROMPT, descriptor, 30.0, prefix=prefix).result(
                timeout=60
            )
            receiver.wait_committed(rid, 30.0)
        assert results["full"].computed_tokens == len(PROMPT)
        assert results["resumed"].computed_tokens == len(PROMPT) - CUT
        for e in expected:
            full, resumed = buffers[("full", e.name)], buffers[("resumed", e.name)]
            assert (full - resumed).abs().max() < 1e-4, e.name
        load = engine.load()
        assert (
            load["free_pages"] == load["total_pages"] and load["free_slots"] == load["total_slots"]
        )
        assert receiver.pending() == 0
    finally:
        engine.close()
        receiver.close()
