"""A two-rank tensor-parallel runner (this process leads, one spawned follower, gloo) against
the one-rank runner: prefill with snapshots, the whole states the leader gathers for streaming,
resuming from a cached prefix, and decoding after a transfer, all agree to fp32 rounding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from engine.model.ling import LingModel
from engine.parallel.launch import load_model_ranks
from engine.runner import ModelRunner, PrefillItem

PROMPT = list(range(7, 90))
ATOL = 2e-4  # fp32, partial sums reduced in a different order


@pytest.fixture(scope="module")
def tp_runner(tiny_model_dir: Path) -> Iterator[ModelRunner]:
    threads = torch.get_num_threads()
    model, link = load_model_ranks(str(tiny_model_dir), "float32", "cpu", 2, timeout_s=30)
    assert link is not None and model.local_heads == model.cfg.num_attention_heads // 2
    try:
        yield ModelRunner(model, 64, 16, 4, ranks=link)
    finally:
        link.close()
        dist.destroy_process_group()
        torch.set_num_threads(threads)


@pytest.fixture
def ref_runner(tiny_model: LingModel) -> ModelRunner:
    return ModelRunner(tiny_model, 64, 16, 4)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= ATOL * scale


def _prefill(runner: ModelRunner) -> tuple[object, dict[int, torch.Tensor], object]:
    """(output, whole state of each Lightning layer as the streaming hook sees it, seq)."""
    seq = runner.new_sequence(len(PROMPT) + 8)
    seen: dict[int, torch.Tensor] = {}

    def hook(layer: int, items: list[int]) -> None:
        if not runner.cfg.is_mla_layer(layer):
            seen[layer] = runner.full_states[seq.slot, runner.model.linear_index[layer]].clone()

    out = runner.prefill_chunked([PrefillItem(seq, PROMPT, (32, 64))], 32, hook)
    return out, seen, seq


def test_prefill_snapshots_and_streamed_states_match(
    tp_runner: ModelRunner, ref_runner: ModelRunner
) -> None:
    (want, want_seen, ref_seq), (got, got_seen, seq) = _prefill(ref_runner), _prefill(tp_runner)
    try:
        _close(want.logits, got.logits)
        assert sorted(got.snapshots) == [(0, 32), (0, 64)]
        for key, snap in want.snapshots.items():
            assert got.snapshots[key].shape == snap.shape
            _close(snap, got.snapshots[key])
        assert sorted(got_seen) == sorted(want_seen) == list(ref_runner.cfg.linear_layers)
        for layer, state in want_seen.items():
            _close(state, got_seen[layer])
        _close(ref_runner.read_latents(ref_seq), tp_runner.read_latents(seq))
        token = int(want.logits[0].argmax())
        for _ in range(4):
            a, b = ref_runner.decode([ref_seq], [token]), tp_runner.decode([seq], [token])
            _close(a, b)
            token = int(a[0].argmax())
    finally:
        ref_runner.release(ref_seq)
        tp_runner.release(seq)
    tp_runner.check_integrity()
    assert tp_runner.latents.num_free == 64 and tp_runner.states.num_free == 4


def test_resuming_from_a_whole_prefix_matches(
    tp_runner: ModelRunner, ref_runner: ModelRunner
) -> None:
    """A cached prefix holds whole states; the leader scatters each rank its heads."""
    head = ref_runner.new_sequence(64)
    out = ref_runner.prefill([PrefillItem(head, PROMPT[:64], (64,))])
    latents, state = ref_runner.read_latents(head), out.snapshots[(0, 64)]
    full = ref_runner.new_sequence(len(PROMPT))
    want = ref_runner.prefill([PrefillItem(full, PROMPT)]).logits
    seq = tp_runner.new_sequence(len(PROMPT))
    try:
        tp_runner.load_prefix(seq, latents, state)
        got = tp_runner.prefill([PrefillItem(seq, PROMPT[64:])]).logits
        _close(want, got)
    finally:
        for s in (head, full):
            ref_runner.release(s)
        tp_runner.release(seq)


def test_decoding_after_a_transfer_into_the_leader_matches(
    tp_runner: ModelRunner, ref_runner: ModelRunner
) -> None:
    """A transfer lands on the leader only (pages and `full_states`); `publish` hands every
    rank its part before the first decode step."""
    ref = ref_runner.new_sequence(len(PROMPT) + 4)
    first = int(ref_runner.prefill([PrefillItem(ref, PROMPT)]).logits[0].argmax())
    seq = tp_runner.new_sequence(len(PROMPT) + 4)
    try:
        rows = ref_runner.latents.storage[:, ref.pages[: ref_runner.latents.pages_for(len(PROMPT))]]
        tp_runner.latents.storage[:, seq.pages[: rows.shape[1]]] = rows
        tp_runner.full_states[seq.slot] = ref_runner.read_state(ref)
        seq.length = len(PROMPT)
        tp_runner.publish([seq])
        _close(ref_runner.decode([ref], [first]), tp_runner.decode([seq], [first]))
    finally:
        ref_runner.release(ref)
        tp_runner.release(seq)
