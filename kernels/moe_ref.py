"""Plain-PyTorch twins of the MoE kernels (also the CPU path).

Routing (Ling-2.6): s = sigmoid(router logits) in fp32; selection scores s + expert_bias;
experts are split into n_group contiguous groups, a group scores the sum of its best two
selection scores, the best topk_group groups stay eligible; the top_k eligible experts by
selection score are chosen. Their weights are the unbiased s, normalized to sum 1 when
norm_topk_prob, times routed_scaling_factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moe_route_ref(
    router_logits: Tensor,
    expert_bias: Tensor | None,
    n_group: int,
    topk_group: int,
    top_k: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[Tensor, Tensor]:
    """Returns (weights fp32 [T, top_k], ids int64 [T, top_k]), ids by descending selection."""
    scores = torch.sigmoid(router_logits.float())
    select = scores if expert_bias is None else scores + expert_bias.float()
    T, E = select.shape
    if n_group > 1 and topk_group < n_group:
        grouped = select.view(T, n_group, E // n_group)
        best = grouped.topk(min(2, E // n_group), dim=-1).values.sum(-1)  # [T, n_group]
        keep = best.topk(topk_group, dim=-1).indices
        group_mask = torch.zeros_like(best, dtype=torch.bool).scatter_(1, keep, True)
        expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(T, E)
        select = select.masked_fill(~expert_mask, float("-inf"))
    ids = select.topk(top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
    return weights * routed_scaling_factor, ids


def swiglu_mlp_ref(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    """down(silu(gate x) * up x) with w13 = [gate_proj ; up_proj] ([2I, Hd]) and w2 [Hd, I]."""
    gate, up = F.linear(x.float(), w13.float()).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2.float()).to(x.dtype)


def fused_moe_ref(
    x: Tensor, topk_weights: Tensor, topk_ids: Tensor, w13: Tensor, w2: Tensor
) -> Tensor:
    """Weighted sum of the chosen experts' SwiGLU outputs. w13 [E, 2I, Hd], w2 [E, Hd, I]."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.reshape(-1)
    token_of = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    flat_w = topk_weights.reshape(-1).float()
    for e in torch.unique(flat_ids).tolist():
        hit = (flat_ids == e).nonzero(as_tuple=True)[0]
        tokens = token_of[hit]
        y = swiglu_mlp_ref(x[tokens].float(), w13[e].float(), w2[e].float())
        out.index_add_(0, tokens, y * flat_w[hit, None])
    return out.to(x.dtype)
