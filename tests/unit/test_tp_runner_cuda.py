"""The NCCL path of tensor parallelism: two ranks on two GPUs (bf16) against one rank, for the
prefill with snapshots and streamed states, a prefix resume from host tensors, and decode.
Needs two GPUs (NCCL refuses two ranks on one device); skipped otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engine.model.ling import LingModel
from engine.parallel.launch import load_model_ranks
from engine.runner import ModelRunner, PrefillItem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
    ),
]
PROMPT = list(range(7, 200))


@pytest.fixture(scope="module")
def runners(tiny_model_dir: Path) -> Iterator[tuple[ModelRunner, ModelRunner]]:
    model, link = load_model_ranks(str(tiny_model_dir), "bfloat16", "cuda", 2, timeout_s=60)
    ref = LingModel.from_pretrained(tiny_model_dir, torch.bfloat16, "cuda:0")
    try:
        yield ModelRunner(ref, 64, 16, 4), ModelRunner(model, 64, 16, 4, ranks=link)
    finally:
        assert link is not None
        link.close()
        dist.destroy_process_group()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / (1e-6 + a.float().norm()))


def test_nccl_ranks_match_one_rank(runners: tuple[ModelRunner, ModelRunner]) -> None:
    ref, tp = runners
    outs = []
    for r in (ref, tp):
        seq = r.new_sequence(len(PROMPT) + 8)
        out = r.prefill_chunked([PrefillItem(seq, PROMPT, (64, 128))], 64, lambda *_: None)
        logits = [out.logits[0]]
        token = int(out.logits[0].argmax())
        for _ in range(4):
            logits.append(r.decode([seq], [token])[0])
            token = int(logits[-1].argmax())
        outs.append((out, torch.stack(logits), r.read_latents(seq)))
        r.release(seq)
    (a, la, lat_a), (b, lb, lat_b) = outs
    assert _rel(la, lb) < 2e-2 and _rel(lat_a, lat_b) < 2e-2
    for key, snap in a.snapshots.items():
        assert b.snapshots[key].device.type == "cuda" and _rel(snap, b.snapshots[key]) < 2e-2


def test_a_prefix_from_host_memory_resumes_on_every_rank(
    runners: tuple[ModelRunner, ModelRunner],
) -> None:
    ref, tp = runners
    head = ref.new_sequence(64)
    out = ref.prefill([PrefillItem(head, PROMPT[:64], (64,))])
    latents, state = ref.read_latents(head).cpu(), out.snapshots[(0, 64)].cpu()
    full = ref.new_sequence(len(PROMPT))
    want = ref.prefill([PrefillItem(full, PROMPT)]).logits
    seq = tp.new_sequence(len(PROMPT))
    try:
        tp.load_prefix(seq, latents, state)
        assert _rel(want, tp.prefill([PrefillItem(seq, PROMPT[64:])]).logits) < 2e-2
    finally:
        for s in (head, full):
            ref.release(s)
        tp.release(seq)
