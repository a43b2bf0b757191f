"""Triton MoE routing, fused experts and dense SwiGLU against their PyTorch twins."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, poisoned, strided

from kernels.moe import fused_moe, swiglu_mlp
from kernels.moe_align import expert_blocks
from kernels.moe_ref import fused_moe_ref, moe_route_ref, swiglu_mlp_ref
from kernels.moe_route import moe_route

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

ROUTE_CASES = [
    # tokens, experts, n_group, topk_group, top_k, norm, bias, logits dtype
    (1, 8, 1, 1, 2, True, True, F32),
    (7, 16, 4, 2, 3, True, True, F32),
    (5, 12, 3, 1, 2, False, False, F16),
    (9, 8, 8, 3, 3, True, True, F32),  # one expert per group: group score = its best one
    (6, 32, 8, 4, 8, True, True, BF16),  # Ling-2.6 proportions
]


@pytest.mark.parametrize(("T", "E", "n_group", "topk_group", "top_k", "norm", "bias", "dtype"),
                         ROUTE_CASES)
def test_route_matches_ref(T: int, E: int, n_group: int, topk_group: int, top_k: int,
                           norm: bool, bias: bool, dtype: torch.dtype, device: str) -> None:
    logits = strided((T, E), dtype, device, 2.0)
    expert_bias = torch.randn(E, device=device) * 0.3 if bias else None
    out = (poisoned((T, top_k), F32, device), poisoned((T, top_k), torch.int64, device))
    w, ids = moe_route(logits, expert_bias, n_group, topk_group, top_k, norm, 2.5, out=out)
    ref_w, ref_ids = moe_route_ref(logits, expert_bias, n_group, topk_group, top_k, norm, 2.5)
    assert torch.equal(ids.cpu(), ref_ids.cpu())
    assert_close(w, ref_w, F32)


def test_route_rejects_impossible_config(device: str) -> None:
    logits = torch.randn(2, 12, device=device)
    with pytest.raises(ValueError, match="must divide"):
        moe_route(logits, None, 5, 2, 2, True, 1.0)
    with pytest.raises(ValueError, match="top_k=7"):
        moe_route(logits, None, 4, 2, 7, True, 1.0)  # 2 groups of 3 experts hold only 6


def _experts(E: int, hidden: int, inter: int, dtype: torch.dtype,
             device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """w13 [E, 2I, Hd] contiguous, w2 [E, Hd, I] as a transposed (non-contiguous) view."""
    w13 = (torch.randn(E, 2 * inter, hidden, device=device) * hidden ** -0.5).to(dtype)
    w2 = (torch.randn(E, inter, hidden, device=device) * inter ** -0.5).to(dtype)
    return w13, w2.transpose(1, 2)


MOE_CASES = [
    # tokens, experts, top_k, hidden, intermediate, dtype
    (1, 4, 1, 16, 16, F32),
    (5, 6, 2, 40, 24, F32),
    (13, 8, 3, 32, 16, F16),
    (20, 3, 2, 24, 40, BF16),  # more rows per expert than one block
    (7, 5, 2, 150, 80, F32),  # several K steps and N tiles in both GEMMs
]


@pytest.mark.parametrize(("T", "E", "top_k", "hidden", "inter", "dtype"), MOE_CASES)
def test_fused_moe_matches_ref(T: int, E: int, top_k: int, hidden: int, inter: int,
                               dtype: torch.dtype, device: str) -> None:
    x = strided((T, hidden), dtype, device)
    w13, w2 = _experts(E, hidden, inter, dtype, device)
    weights, ids = moe_route_ref(torch.randn(T, E, device=device), None, 1, 1, top_k, True, 1.0)
    out = poisoned((T, hidden), dtype, device)
    y = fused_moe(x, weights, ids.to(torch.int32), w13, w2, out=out)
    assert_close(y, fused_moe_ref(x, weights, ids, w13, w2), dtype)


@pytest.mark.parametrize(("T", "hidden", "inter", "dtype"), [(1, 16, 32, F32), (19, 40, 24, F16)])
def test_swiglu_mlp_matches_ref(T: int, hidden: int, inter: int, dtype: torch.dtype,
                                device: str) -> None:
    x = strided((T, hidden), dtype, device)
    w13, w2 = _experts(1, hidden, inter, dtype, device)
    out = poisoned((T, hidden), dtype, device)
    y = swiglu_mlp(x, w13[0], w2[0], out=out)
    assert_close(y, swiglu_mlp_ref(x.float(), w13[0].float(), w2[0].float()), dtype)


def test_fused_moe_rejects_bad_weights(device: str) -> None:
    x = torch.randn(2, 16, device=device)
    w13, w2 = _experts(2, 16, 8, F32, device)
    ids = torch.zeros(2, 1, dtype=torch.int64, device=device)
    weights = torch.ones(2, 1, device=device)
    with pytest.raises(ValueError, match="w2 must have shape"):
        fused_moe(x, weights, ids, w13, w2[:, :, :4])
    with pytest.raises(ValueError, match="share one dtype"):
        fused_moe(x.half(), weights, ids, w13, w2)


@pytest.mark.parametrize(("T", "E", "top_k", "block_m"), [(1, 8, 2, 16), (300, 7, 3, 16),
                                                          (40, 64, 4, 32)])
def test_expert_blocks_group_every_pair_once(T: int, E: int, top_k: int, block_m: int,
                                             device: str) -> None:
    ids = torch.stack([torch.randperm(E, device=device)[:top_k] for _ in range(T)])
    ids[ids == 1] = 0  # expert 1 gets no pairs
    pairs, block_expert = expert_blocks(ids, E, block_m)
    pairs, block_expert = pairs.cpu().long(), block_expert.cpu().long()
    flat = ids.reshape(-1).cpu()
    assert sorted(pairs[pairs >= 0].tolist()) == list(range(T * top_k))
    blocks = pairs.view(-1, block_m)
    for blk, expert in zip(blocks, block_expert.tolist(), strict=True):
        used = blk[blk >= 0]
        if expert < 0:
            assert used.numel() == 0
        else:
            assert (flat[used] == expert).all()
            assert (blk[:used.numel()] >= 0).all()  # padding only at a run's end
    live = block_expert[block_expert >= 0]
    assert (live[1:] >= live[:-1]).all()  # runs in expert order
    assert 1 not in live.tolist()
