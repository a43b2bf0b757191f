"""The three forward paths agree: cached prefill + decode vs the full forward, chunked vs
single-pass prefill, and prefill resumed from a state snapshot vs a full prefill."""

from __future__ import annotations

import pytest
import torch

from engine.model.ling import LingModel
from engine.runner import ModelRunner, PrefillItem

TOL = 1e-4
LENGTHS = (1, 5, 16, 17, 40, 67)  # 1, page size 16 and not, not multiples of the chunk (8)


def _prompts(vocab: int, lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture()
def runner(tiny_model: LingModel):  # type: ignore[no-untyped-def]
    r = ModelRunner(tiny_model, num_pages=96, page_size=16, num_slots=8, lightning_chunk=8)
    yield r
    r.check_integrity()
    assert r.latents.num_free == 96 and r.states.num_free == 8, "pools not back to empty"


def test_decode_after_prefill_matches_full_forward(
    tiny_model: LingModel, runner: ModelRunner
) -> None:
    prompts = _prompts(tiny_model.cfg.vocab_size, LENGTHS, seed=1)
    full = [tiny_model.forward_full(p)[0] for p in prompts]
    seqs = [runner.new_sequence(len(p)) for p in prompts]
    try:
        # Prefill a prefix of each prompt (at least one token), then decode the rest token by token.
        split = [max(1, len(p) // 2) for p in prompts]
        out = runner.prefill(
            [PrefillItem(s, p[:k]) for s, p, k in zip(seqs, prompts, split, strict=True)]
        )
        for b in range(len(prompts)):
            assert (out.logits[b] - full[b][split[b] - 1]).abs().max() < TOL
        checked = 0
        while True:
            live = [b for b, p in enumerate(prompts) if seqs[b].length < len(p)]
            if not live:
                break
            logits = runner.decode(
                [seqs[b] for b in live], [prompts[b][seqs[b].length] for b in live]
            )
            for j, b in enumerate(live):
                assert (logits[j] - full[b][seqs[b].length - 1]).abs().max() < TOL
                checked += 1
        assert checked == sum(len(p) - k for p, k in zip(prompts, split, strict=True))
    finally:
        for s in seqs:
            runner.release(s)


@pytest.mark.parametrize("chunk", [1, 3, 8, 16, 29])
def test_chunked_prefill_equals_single_pass(
    tiny_model: LingModel, runner: ModelRunner, chunk: int
) -> None:
    prompts = _prompts(tiny_model.cfg.vocab_size, (1, 13, 40), seed=2)
    seqs_a = [runner.new_sequence(len(p)) for p in prompts]
    seqs_b = [runner.new_sequence(len(p)) for p in prompts]
    try:
        whole = runner.prefill([PrefillItem(s, p) for s, p in zip(seqs_a, prompts, strict=True)])
        chunked = runner.prefill_chunked(
            [PrefillItem(s, p) for s, p in zip(seqs_b, prompts, strict=True)], chunk
        )
        assert (whole.logits - chunked.logits).abs().max() < TOL
        for a, b in zip(seqs_a, seqs_b, strict=True):
            assert (runner.read_state(a) - runner.read_state(b)).abs().max() < TOL
            assert (runner.read_latents(a) - runner.read_latents(b)).abs().max() < TOL
    finally:
        for s in seqs_a + seqs_b:
            runner.release(s)


def test_resume_from_snapshot_at_each_block_boundary(
    tiny_model: LingModel, runner: ModelRunner
) -> None:
    block = 16
    prompt = _prompts(tiny_model.cfg.vocab_size, (70,), seed=3)[0]
    boundaries = tuple(range(block, len(prompt), block))
    ref = runner.new_sequence(len(prompt))
    try:
        full = runner.prefill_chunked(
            [PrefillItem(ref, prompt, snapshot_at=boundaries)], chunk_tokens=24
        )
        assert sorted(c for _, c in full.snapshots) == list(boundaries)
        latents = runner.read_latents(ref)
        for count in boundaries:
            resumed = runner.new_sequence(len(prompt))
            try:
                runner.load_prefix(resumed, latents[:, :count], full.snapshots[(0, count)])
                out = runner.prefill([PrefillItem(resumed, prompt[count:])])
                assert (out.logits[0] - full.logits[0]).abs().max() < TOL
                assert (runner.read_state(resumed) - runner.read_state(ref)).abs().max() < TOL
            finally:
                runner.release(resumed)
    finally:
        runner.release(ref)


def test_full_forward_is_causal(tiny_model: LingModel) -> None:
    """Logits at a position do not depend on later tokens (a sanity check of the reference)."""
    prompt = _prompts(tiny_model.cfg.vocab_size, (12,), seed=4)[0]
    a = tiny_model.forward_full(prompt)[0]
    b = tiny_model.forward_full(prompt[:7])[0]
    assert (a[:7] - b).abs().max() < TOL
    assert (a[7:] - a[6]).abs().max() > 1e-2  # later positions really differ


def test_out_of_pages_allocates_nothing(tiny_model: LingModel) -> None:
    from engine.cache.allocator import OutOfCapacity

    small = ModelRunner(tiny_model, num_pages=4, page_size=16, num_slots=2)
    with pytest.raises(OutOfCapacity):
        small.new_sequence(5 * 16)
    assert small.latents.num_free == 4 and small.states.num_free == 2
    small.check_integrity()
