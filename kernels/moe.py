"""Triton fused MoE: token grouping by expert, grouped SwiGLU GEMMs, weighted combine.

    y_t = sum_k w_tk * W2_e (silu(W1_e x_t) * W3_e x_t),  e = topk_ids[t, k],
with w13[e] = [W1_e ; W3_e] ([2I, Hd]) and w2[e] = W2_e ([Hd, I]). Steps:
  1. grouping (kernels.moe_align, no host sync): the T * top_k (token, k) pairs are grouped by
     expert and each expert's run is padded to a multiple of BM, giving blocks of BM pair ids
     (-1 = padding) that all use one expert;
  2. `_gate_up_kernel`: per (block, I tile) both GEMMs against x's rows, SwiGLU in fp32, stored
     per pair in x's dtype (the down GEMM's operand dtype);
  3. `_down_kernel`: per (block, Hd tile) the down GEMM times the routing weight, fp32 per pair;
  4. `_combine_kernel`: y_t = sum over the top_k pair rows of token t, in fp32, cast once.
The dense SwiGLU MLP (and the shared expert) is the same path with one expert and weight 1.
Routing lives in kernels.moe_route. Twin: kernels.moe_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc
from kernels.moe_align import expert_blocks
from kernels.moe_route import moe_route

__all__ = ["fused_moe", "moe_route", "swiglu_mlp"]


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, act_ptr, pairs_ptr, block_expert_ptr, top_k, HD, INTER,
    stride_xt, stride_xd, stride_we, stride_wn, stride_wk, stride_at,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    blk = tl.program_id(0)
    expert = tl.load(block_expert_ptr + blk).to(tl.int64)
    if expert < 0:  # past the last padded block
        return
    pairs = tl.load(pairs_ptr + blk * BM + tl.arange(0, BM))
    p_in = pairs >= 0
    tokens = tl.where(p_in, pairs // top_k, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_in = offs_n < INTER
    offs_k = tl.arange(0, BK)
    w_base = w_ptr + expert * stride_we + offs_k[:, None] * stride_wk
    acc_gate = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, HD, BK):
        k_in = (k0 + offs_k) < HD
        x = tl.load(x_ptr + tokens[:, None] * stride_xt + (k0 + offs_k)[None, :] * stride_xd,
                    mask=p_in[:, None] & k_in[None, :], other=0.0).to(DOT)
        w_mask = k_in[:, None] & n_in[None, :]
        w_gate = tl.load(w_base + k0 * stride_wk + offs_n[None, :] * stride_wn,
                         mask=w_mask, other=0.0).to(DOT)
        w_up = tl.load(w_base + k0 * stride_wk + (INTER + offs_n)[None, :] * stride_wn,
                       mask=w_mask, other=0.0).to(DOT)
        acc_gate = tl.dot(x, w_gate, acc=acc_gate, input_precision=PREC)
        acc_up = tl.dot(x, w_up, acc=acc_up, input_precision=PREC)
    act = acc_gate * tl.sigmoid(acc_gate) * acc_up
    rows = tl.where(p_in, pairs, 0).to(tl.int64)
    tl.store(act_ptr + rows[:, None] * stride_at + offs_n[None, :],
             act.to(act_ptr.dtype.element_ty), mask=p_in[:, None] & n_in[None, :])


@triton.jit
def _down_kernel(
    act_ptr, w_ptr, weight_ptr, y_ptr, pairs_ptr, block_expert_ptr, top_k, HD, INTER,
    stride_at, stride_we, stride_wn, stride_wk, stride_gt, stride_gk, stride_yt,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    blk = tl.program_id(0)
    expert = tl.load(block_expert_ptr + blk).to(tl.int64)
    if expert < 0:
        return
    pairs = tl.load(pairs_ptr + blk * BM + tl.arange(0, BM))
    p_in = pairs >= 0
    rows = tl.where(p_in, pairs, 0).to(tl.int64)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_in = offs_n < HD
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, INTER, BK):
        k_in = (k0 + offs_k) < INTER
        a = tl.load(act_ptr + rows[:, None] * stride_at + (k0 + offs_k)[None, :],
                    mask=p_in[:, None] & k_in[None, :], other=0.0).to(DOT)
        w = tl.load(w_ptr + expert * stride_we + offs_n[None, :] * stride_wn
                    + (k0 + offs_k)[:, None] * stride_wk,
                    mask=k_in[:, None] & n_in[None, :], other=0.0).to(DOT)
        acc = tl.dot(a, w, acc=acc, input_precision=PREC)
    gate = tl.load(weight_ptr + (rows // top_k) * stride_gt + (rows % top_k) * stride_gk,
                   mask=p_in, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows[:, None] * stride_yt + offs_n[None, :], acc * gate[:, None],
             mask=p_in[:, None] & n_in[None, :])


@triton.jit
def _combine_kernel(y_ptr, out_ptr, top_k, HD, stride_yt, stride_ot, stride_od,
                    BN: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BN + tl.arange(0, BN)
    n_in = offs < HD
    acc = tl.zeros((BN,), dtype=tl.float32)
    for j in range(0, top_k):
        acc += tl.load(y_ptr + (t * top_k + j) * stride_yt + offs, mask=n_in, other=0.0)
    tl.store(out_ptr + t * stride_ot + offs * stride_od, acc.to(out_ptr.dtype.element_ty),
             mask=n_in)


def _block_sizes(n_pairs: int, num_experts: int) -> tuple[int, int, int, int]:
    """(BM, BN, BK, num_warps) by the mean rows per expert (fixed table, no autotune)."""
    if tc.interpreting():  # few, large programs: the interpreter pays per program and op
        return 16, 64, 64, 4
    per_expert = n_pairs / max(1, num_experts)
    if per_expert <= 16:
        return 16, 64, 128, 4
    if per_expert <= 64:
        return 64, 64, 64, 4
    return 128, 128, 64, 8


def _check(x: Tensor, topk_weights: Tensor, topk_ids: Tensor, w13: Tensor,
           w2: Tensor) -> torch.device:
    device = tc.check_device({"x": x, "topk_weights": topk_weights, "topk_ids": topk_ids,
                              "w13": w13, "w2": w2})
    tc.check_dtype(x, "x", tc.FLOAT_DTYPES)
    tc.check_same_dtype({"x": x, "w13": w13, "w2": w2})
    tc.check_shape(x, "x", [None, None])
    T, HD = x.shape
    tc.check_shape(w13, "w13", [None, None, HD])
    E, I2 = w13.shape[0], w13.shape[1]
    if I2 % 2:
        raise ValueError(f"w13 dim 1 must be 2 * intermediate, got {I2}")
    tc.check_shape(w2, "w2", [E, HD, I2 // 2])
    tc.check_shape(topk_ids, "topk_ids", [T, None])
    tc.check_dtype(topk_ids, "topk_ids", tc.INDEX_DTYPES)
    tc.check_shape(topk_weights, "topk_weights", [T, topk_ids.shape[1]])
    tc.check_dtype(topk_weights, "topk_weights", tc.FLOAT_DTYPES)
    return device


def fused_moe(
    x: Tensor, topk_weights: Tensor, topk_ids: Tensor, w13: Tensor, w2: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """Routed SwiGLU experts, weighted and summed; same contract as moe_ref.fused_moe_ref.

    x: [T, Hd]; topk_weights: [T, K] float; topk_ids: int [T, K] with values in [0, E);
    w13: [E, 2I, Hd] (= [gate_proj ; up_proj]); w2: [E, Hd, I]; any strides.
    Returns [T, Hd] in x.dtype (written into `out` when given).
    """
    device = _check(x, topk_weights, topk_ids, w13, w2)
    T, HD = x.shape
    E, inter = w13.shape[0], w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    o = tc.check_out(out, "out", (T, HD), x.dtype, device)
    if T == 0 or top_k == 0:
        return o.zero_()
    bm, bn, bk, warps = _block_sizes(T * top_k, E)
    pairs, block_expert = expert_blocks(topk_ids, E, bm)
    act = torch.empty((T * top_k, inter), dtype=x.dtype, device=device)
    y = torch.empty((T * top_k, HD), dtype=torch.float32, device=device)
    meta = {"BM": bm, "BN": bn, "BK": bk, "DOT": tc.dot_dtype(x.dtype),
            "PREC": tc.dot_precision(x.dtype), "num_warps": warps, "num_stages": 3}
    n_blocks = block_expert.shape[0]
    tc.launch(_gate_up_kernel, (n_blocks, tc.cdiv(inter, bn)), x, w13, act, pairs, block_expert,
              top_k, HD, inter, *x.stride(), *w13.stride(), act.stride(0), **meta)
    tc.launch(_down_kernel, (n_blocks, tc.cdiv(HD, bn)), act, w2, topk_weights, y, pairs,
              block_expert, top_k, HD, inter, act.stride(0), *w2.stride(), *topk_weights.stride(),
              y.stride(0), **meta)
    block = min(1024, tc.next_pow2(HD))
    tc.launch(_combine_kernel, (T, tc.cdiv(HD, block)), y, o, top_k, HD, y.stride(0),
              *o.stride(), BN=block, num_warps=4)
    return o


def swiglu_mlp(x: Tensor, w13: Tensor, w2: Tensor, out: Tensor | None = None) -> Tensor:
    """Dense SwiGLU MLP down(silu(gate x) * up x) with w13 [2I, Hd], w2 [Hd, I]; the fused MoE
    path with a single expert of weight 1. Same contract as moe_ref.swiglu_mlp_ref."""
    tc.check_shape(x, "x", [None, None])
    tc.check_shape(w13, "w13", [None, None])
    tc.check_shape(w2, "w2", [None, None])
    T = x.shape[0]
    ids = torch.zeros((T, 1), dtype=torch.int64, device=x.device)
    weights = torch.ones((T, 1), dtype=torch.float32, device=x.device)
    return fused_moe(x, weights, ids, w13[None], w2[None], out=out)
