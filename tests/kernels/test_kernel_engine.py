"""The tiny Ling model end to end through the Triton kernels (interpreter on the CPU, natively
on a GPU) against the same model through the PyTorch twins: prefill with snapshots, decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernel_testing import assert_close

from engine.model.ling import LingModel
from engine.runner import ModelRunner, PrefillItem

PROMPTS = [[11, 400, 7, 1999, 23, 23, 805, 64, 3, 1200],
           [5 * i % 2000 + 1 for i in range(37)]]


def _run(model: LingModel, monkeypatch: pytest.MonkeyPatch,
         mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    monkeypatch.setenv("DUET_KERNELS", mode)
    runner = ModelRunner(model, num_pages=16, page_size=16, num_slots=2, lightning_chunk=16)
    seqs = [runner.new_sequence(len(p) + 2) for p in PROMPTS]
    try:
        items = [PrefillItem(s, p, snapshot_at=[16, 32]) for s, p in zip(seqs, PROMPTS,
                                                                         strict=True)]
        out = runner.prefill(items)
        decoded = runner.decode(seqs, [5, 9])
        snapshot = out.snapshots[(1, 32)]
    finally:
        for s in seqs:
            runner.release(s)
    runner.check_integrity()
    return out.logits, decoded, snapshot


def test_tiny_model_through_triton_matches_ref(tiny_model_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LingModel.from_pretrained(tiny_model_dir, device=device)
    want = _run(model, monkeypatch, "ref")
    got = _run(model, monkeypatch, "interpret" if device == "cpu" else "triton")
    for name, a, b in zip(("prefill logits", "decode logits", "snapshot"), got, want,
                          strict=True):
        assert_close(a, b, torch.float32, name)
