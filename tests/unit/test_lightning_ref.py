"""The chunked Lightning form (prefill twin) equals the token-by-token recurrence."""

from __future__ import annotations

import pytest
import torch

from kernels.lightning_ref import (
    lightning_decode_ref,
    lightning_prefill_ref,
    lightning_recurrent_ref,
)

H, D = 3, 8


def _inputs(total: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(total, H, D, generator=gen) * 0.5 for _ in range(3))
    g = -torch.rand(H, generator=gen) * 0.5 - 0.01
    return q, k, v, g


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_equals_recurrence_varlen_with_initial_state(chunk: int) -> None:
    lens = [1, 9, 20]
    q, k, v, g = _inputs(sum(lens), seed=chunk)
    cu = torch.tensor([0, 1, 10, 30])
    states = torch.randn(5, H, D, D)
    init = states.clone()
    initial, final = torch.tensor([2, -1, 4]), torch.tensor([0, 1, 4])
    snap_ends = torch.tensor([5, 10, 17, 30])
    snaps = torch.full((4, H, D, D), float("nan"))
    out = lightning_prefill_ref(q, k, v, g, cu, states, initial, final, chunk, snap_ends, snaps)
    starts = [init[2], None, init[4]]
    for b in range(3):
        sl = slice(int(cu[b]), int(cu[b + 1]))
        o, s = lightning_recurrent_ref(q[sl], k[sl], v[sl], g, starts[b])
        assert torch.allclose(out[sl], o, atol=1e-4)
        assert torch.allclose(states[int(final[b])], s, atol=1e-4)
    _, s_mid = lightning_recurrent_ref(q[1:5], k[1:5], v[1:5], g)  # seq 1, first 4 tokens
    assert torch.allclose(snaps[0], s_mid, atol=1e-4)
    _, s_end = lightning_recurrent_ref(q[10:17], k[10:17], v[10:17], g, init[4])
    assert torch.allclose(snaps[2], s_end, atol=1e-4)
    assert torch.equal(states[3], init[3]), "an untouched slot changed"


def test_decode_step_equals_recurrence_and_skips_padding() -> None:
    q, k, v, g = _inputs(3, seed=7)
    states = torch.randn(4, H, D, D)
    before = states.clone()
    out = lightning_decode_ref(q, k, v, g, states, torch.tensor([3, -1, 0]))
    for row, slot in ((0, 3), (2, 0)):
        o, s = lightning_recurrent_ref(
            q[row : row + 1], k[row : row + 1], v[row : row + 1], g, before[slot]
        )
        assert torch.allclose(out[row], o[0], atol=1e-5)
        assert torch.allclose(states[slot], s, atol=1e-5)
    assert torch.count_nonzero(out[1]) == 0
    assert torch.equal(states[1], before[1]) and torch.equal(states[2], before[2])
