"""Triton MoE routing: sigmoid scores, expert bias, group-limited top-k (Ling-2.6 / DeepSeek-V3).

Per token t (fp32): s = sigmoid(logits_t); selection = s + expert_bias. Experts form n_group
contiguous groups; a group scores the sum of its best two selection scores (best one if it has
one expert); the topk_group best groups stay eligible (no group limit when n_group <= 1 or
topk_group >= n_group); then top_k eligible experts are chosen by selection score, in
descending order. Weights are the unbiased s of the chosen experts, divided by their sum when
norm_topk_prob, times routed_scaling_factor. Ties go to the lower expert index.
One program handles BT tokens with all experts in registers. Twin: kernels.moe_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc


@triton.jit
def _pick(values, offs):
    """Row-wise argmax of a [BT, BE] block: (index [BT], one-hot hit mask [BT, BE])."""
    idx = tl.argmax(values, axis=1)
    return idx, offs[None, :] == idx[:, None]


@triton.jit
def _group_mask(sel, offs_e, N_GROUP: tl.constexpr, GROUP_SIZE: tl.constexpr,
                TOPK_GROUP: tl.constexpr, BT: tl.constexpr, BG: tl.constexpr):
    """[BT, BE] mask of the experts in each token's topk_group best groups."""
    gid = offs_e // GROUP_SIZE
    offs_g = tl.arange(0, BG)
    gscore = tl.full((BT, BG), float("-inf"), tl.float32)
    for gi in tl.static_range(N_GROUP):
        in_g = tl.where((gid == gi)[None, :], sel, float("-inf"))
        hit = _pick(in_g, offs_e)[1]
        best = tl.max(in_g, axis=1)
        if GROUP_SIZE > 1:
            best += tl.max(tl.where(hit, float("-inf"), in_g), axis=1)
        gscore = tl.where((offs_g == gi)[None, :], best[:, None], gscore)
    keep_g = tl.zeros((BT, BG), dtype=tl.int32)
    for _ in tl.static_range(TOPK_GROUP):
        ghit = _pick(gscore, offs_g)[1]
        keep_g = tl.where(ghit, 1, keep_g)
        gscore = tl.where(ghit, float("-inf"), gscore)
    keep = tl.zeros(sel.shape, dtype=tl.int32)
    for gi in tl.static_range(N_GROUP):
        kept = tl.sum(tl.where((offs_g == gi)[None, :], keep_g, 0), axis=1)
        keep = tl.where((gid == gi)[None, :] & (kept[:, None] > 0), 1, keep)
    return keep > 0


@triton.jit
def _route_kernel(
    logits_ptr, bias_ptr, w_ptr, ids_ptr, T,
    stride_lt, stride_le, stride_wt, stride_wk, stride_it, stride_ik, scaling,
    E: tl.constexpr, HAS_BIAS: tl.constexpr, GROUPED: tl.constexpr, N_GROUP: tl.constexpr,
    TOPK_GROUP: tl.constexpr, TOP_K: tl.constexpr, NORM: tl.constexpr,
    BT: tl.constexpr, BE: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr,
):
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    t_in = rows < T
    offs_e = tl.arange(0, BE)
    e_in = offs_e < E
    logits = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_lt
                     + offs_e[None, :] * stride_le,
                     mask=t_in[:, None] & e_in[None, :], other=0.0).to(tl.float32)
    s = tl.sigmoid(logits)
    sel = s
    if HAS_BIAS:
        sel += tl.load(bias_ptr + offs_e, mask=e_in, other=0.0).to(tl.float32)[None, :]
    sel = tl.where(e_in[None, :], sel, float("-inf"))
    if GROUPED:
        keep = _group_mask(sel, offs_e, N_GROUP, E // N_GROUP, TOPK_GROUP, BT, BG)
        sel = tl.where(keep, sel, float("-inf"))
    offs_k = tl.arange(0, BK)
    weights = tl.zeros((BT, BK), dtype=tl.float32)
    ids = tl.zeros((BT, BK), dtype=tl.int64)
    for j in tl.static_range(TOP_K):
        idx, hit = _pick(sel, offs_e)
        w = tl.sum(tl.where(hit, s, 0.0), axis=1)
        weights = tl.where((offs_k == j)[None, :], w[:, None], weights)
        ids = tl.where((offs_k == j)[None, :], idx[:, None].to(tl.int64), ids)
        sel = tl.where(hit, float("-inf"), sel)
    if NORM:
        weights = weights / tl.maximum(tl.sum(weights, axis=1), 1e-20)[:, None]
    out_mask = t_in[:, None] & (offs_k[None, :] < TOP_K)
    tl.store(w_ptr + rows[:, None] * stride_wt + offs_k[None, :] * stride_wk,
             weights * scaling, mask=out_mask)
    tl.store(ids_ptr + rows[:, None] * stride_it + offs_k[None, :] * stride_ik, ids,
             mask=out_mask)


def moe_route(
    router_logits: Tensor, expert_bias: Tensor | None, n_group: int, topk_group: int,
    top_k: int, norm_topk_prob: bool, routed_scaling_factor: float,
    out: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Group-limited sigmoid top-k routing; same contract as kernels.moe_ref.moe_route_ref.

    router_logits: [T, E] float; expert_bias: [E] or None. E must divide into n_group groups
    and the kept groups must hold at least top_k experts. Returns (weights fp32 [T, top_k],
    ids int64 [T, top_k]), ids by descending selection score (written into `out` when given).
    """
    device = tc.check_device({"router_logits": router_logits, "expert_bias": expert_bias})
    tc.check_dtype(router_logits, "router_logits", tc.FLOAT_DTYPES)
    tc.check_shape(router_logits, "router_logits", [None, None])
    T, E = router_logits.shape
    if expert_bias is not None:
        tc.check_shape(expert_bias, "expert_bias", [E])
        tc.check_dtype(expert_bias, "expert_bias", tc.FLOAT_DTYPES)
    grouped = n_group > 1 and topk_group < n_group
    if grouped and E % n_group:
        raise ValueError(f"n_group={n_group} must divide the {E} experts")
    eligible = topk_group * (E // n_group) if grouped else E
    if not 1 <= top_k <= eligible:
        raise ValueError(f"top_k={top_k} must be in [1, {eligible}] (experts in kept groups)")
    w_out, id_out = out if out is not None else (None, None)
    weights = tc.check_out(w_out, "weights out", (T, top_k), torch.float32, device)
    ids = tc.check_out(id_out, "ids out", (T, top_k), torch.int64, device)
    if T == 0:
        return weights, ids
    bt = 16 if tc.interpreting() else 8
    bias = expert_bias if expert_bias is not None else router_logits  # unused when no bias
    tc.launch(_route_kernel, (tc.cdiv(T, bt),), router_logits, bias, weights, ids, T,
              *router_logits.stride(), *weights.stride(), *ids.stride(),
              float(routed_scaling_factor),
              E=E, HAS_BIAS=expert_bias is not None, GROUPED=grouped, N_GROUP=n_group,
              TOPK_GROUP=topk_group, TOP_K=top_k, NORM=bool(norm_topk_prob),
              BT=bt, BE=tc.next_pow2(E, minimum=2), BG=tc.next_pow2(n_group, minimum=2),
              BK=tc.next_pow2(top_k, minimum=2), num_warps=4)
    return weights, ids
