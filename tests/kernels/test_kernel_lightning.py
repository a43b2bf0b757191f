"""Triton Lightning prefill and decode against their PyTorch twins."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, offsets, poisoned, strided

from kernels.lightning_decode import lightning_decode
from kernels.lightning_prefill import lightning_prefill
from kernels.lightning_ref import lightning_decode_ref, lightning_prefill_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _pool(slots: int, H: int, D: int, device: str) -> torch.Tensor:
    """Layer 1 of a 2-layer state pool: a strided [S, H, D, D] view, like the engine's."""
    return torch.randn(slots, 2, H, D, D, device=device)[:, 1] * 0.1


def _decay(H: int, device: str) -> torch.Tensor:
    return -(torch.rand(H, device=device) * 0.5 + 0.01)


def _snapshot_ends(lengths: list[int], chunk: int) -> list[int]:
    """Every chunk boundary inside each sequence, plus each sequence's end."""
    ends, start = [], 0
    for n in lengths:
        ends += [start + m for m in range(chunk, n, chunk)] + [start + n]
        start += n
    return ends


PREFILL_CASES = [
    # lengths, heads, head dim, chunk, dtype
    ([1], 1, 16, 16, F32),
    ([17], 2, 16, 16, F16),
    ([1, 16, 40, 5], 2, 24, 16, F32),
    ([33, 1, 64], 3, 16, 32, F16),
    ([20, 3], 2, 16, 16, BF16),
]


@pytest.mark.parametrize(("lengths", "H", "D", "chunk", "dtype"), PREFILL_CASES)
def test_prefill_matches_ref(lengths: list[int], H: int, D: int, chunk: int,
                             dtype: torch.dtype, device: str) -> None:
    B, T = len(lengths), sum(lengths)
    q, k, v = (strided((T, H, D), dtype, device, 0.5) for _ in range(3))
    g = _decay(H, device)
    cu = offsets(lengths, device)
    states = _pool(2 * B + 2, H, D, device)
    # Sequence b reads slot 2b (or zero state for odd b); even b writes back to its own slot
    # (read before write), odd b to a fresh poisoned slot; the last sequence writes nothing.
    initial = [-1 if b % 2 else 2 * b for b in range(B)]
    final = [2 * b if b % 2 == 0 else 2 * b + 1 for b in range(B)]
    final[-1] = -1 if B > 1 else final[-1]
    for b in range(B):
        if final[b] >= 0 and final[b] != initial[b]:
            states[final[b]] = float("nan")
    init_t = torch.tensor(initial, dtype=torch.int32, device=device)
    final_t = torch.tensor(final, dtype=torch.int64, device=device)
    wanted = _snapshot_ends(lengths, chunk)
    wanted.append(wanted[0])  # a repeated position gets its own copy
    ends = torch.tensor(wanted, dtype=torch.int32, device=device)
    snaps = poisoned((ends.shape[0], H, D, D), F32, device)
    ref_states, ref_snaps = states.clone(), snaps.clone()
    out = poisoned((T, H, D), dtype, device)
    o = lightning_prefill(q, k, v, g, cu, states, init_t, final_t, chunk, ends, snaps, out=out)
    ref = lightning_prefill_ref(q, k, v, g, cu, ref_states, init_t, final_t, chunk, ends,
                                ref_snaps)
    assert o is out
    assert_close(o, ref, dtype, "output")
    assert_close(snaps, ref_snaps, dtype, "snapshots")
    tol = {F32: 1e-5, F16: 1e-2, BF16: 3e-2}[dtype]
    torch.testing.assert_close(states, ref_states, rtol=tol, atol=tol, equal_nan=True)


def test_prefill_without_snapshots_allocates_output(device: str) -> None:
    lengths, H, D = [5, 30], 2, 16
    q, k, v = (torch.randn(sum(lengths), H, D, device=device) for _ in range(3))
    g, cu = _decay(H, device), offsets(lengths, device)
    states = _pool(3, H, D, device)
    ref_states = states.clone()
    slots = torch.tensor([0, 2], device=device)
    o = lightning_prefill(q, k, v, g, cu, states, slots, slots, 16)
    ref = lightning_prefill_ref(q, k, v, g, cu, ref_states, slots, slots, 16)
    assert_close(o, ref, F32)
    assert_close(states, ref_states, F32, "states")


def test_prefill_rejects_unaligned_snapshot_and_bad_args(device: str) -> None:
    H, D = 1, 16
    q = torch.randn(40, H, D, device=device)
    g, cu = _decay(H, device), offsets([40], device)
    states = _pool(1, H, D, device)
    none = torch.tensor([-1], device=device)
    snaps = torch.zeros(1, H, D, D, device=device)
    with pytest.raises(ValueError, match="snapshot end"):
        lightning_prefill(q, q, q, g, cu, states, none, none, 16,
                          torch.tensor([20], device=device), snaps)
    with pytest.raises(ValueError, match="chunk_size"):
        lightning_prefill(q, q, q, g, cu, states, none, none, 24)
    with pytest.raises(ValueError, match="states must be one of"):
        lightning_prefill(q, q, q, g, cu, states.double(), none, none, 16)
    with pytest.raises(ValueError, match="k must have shape"):
        lightning_prefill(q, q[:, :, :8], q, g, cu, states, none, none, 16)


DECODE_CASES = [
    # batch, heads, head dim, dtype, slots (-1 = padding row)
    (1, 1, 16, F32, [0]),
    (5, 3, 24, F16, [4, -1, 0, 6, 2]),
    (4, 2, 16, F32, [-1, -1, -1, -1]),
    (3, 2, 32, BF16, [1, -1, 5]),
]


@pytest.mark.parametrize(("B", "H", "D", "dtype", "slots"), DECODE_CASES)
def test_decode_matches_ref(B: int, H: int, D: int, dtype: torch.dtype, slots: list[int],
                            device: str) -> None:
    q, k, v = (strided((B, H, D), dtype, device) for _ in range(3))
    g = _decay(H, device)
    states = _pool(7, H, D, device)
    unused = [s for s in range(7) if s not in slots]
    states[unused] = float("nan")  # must stay untouched
    ref_states = states.clone()
    slot_t = torch.tensor(slots, dtype=torch.int32, device=device)
    out = poisoned((B, H, D), dtype, device)
    o = lightning_decode(q, k, v, g, states, slot_t, out=out)
    ref = lightning_decode_ref(q, k, v, g, ref_states, slot_t)
    assert_close(o, ref, dtype)
    assert (o[slot_t < 0] == 0).all()
    torch.testing.assert_close(states, ref_states, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_decode_rejects_mismatched_slots(device: str) -> None:
    q = torch.randn(2, 1, 16, device=device)
    states = _pool(2, 1, 16, device)
    with pytest.raises(ValueError, match="slots must have shape"):
        lightning_decode(q, q, q, _decay(1, device), states, torch.tensor([0], device=device))
    with pytest.raises(ValueError, match="slots must be one of"):
        lightning_decode(q, q, q, _decay(1, device), states, torch.tensor([0.0, 1.0],
                                                                          device=device))
