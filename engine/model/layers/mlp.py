"""Dense SwiGLU MLP and the sparse MoE block (sigmoid, group-limited, expert bias, shared)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig
from kernels import api

Weights = dict[str, Tensor]


def stack_swiglu(w: Weights, prefix: str) -> tuple[Tensor, Tensor]:
    """(w13 = [gate ; up], w2 = down) from a checkpoint's gate/up/down projections."""
    w13 = torch.cat([w[f"{prefix}.gate_proj.weight"], w[f"{prefix}.up_proj.weight"]], dim=0)
    return w13, w[f"{prefix}.down_proj.weight"]


class DenseMLP:
    def __init__(self, w: Weights, prefix: str) -> None:
        self.w13, self.w2 = stack_swiglu(w, prefix)

    def __call__(self, x: Tensor) -> Tensor:
        return api.swiglu_mlp(x, self.w13, self.w2)


class MoEBlock:
    def __init__(self, cfg: ModelConfig, w: Weights, prefix: str) -> None:
        self.cfg = cfg
        self.router = w[f"{prefix}.gate.weight"].float()
        self.expert_bias = w[f"{prefix}.gate.expert_bias"].float()
        pairs = [stack_swiglu(w, f"{prefix}.experts.{e}") for e in range(cfg.num_experts)]
        self.w13 = torch.stack([p[0] for p in pairs])
        self.w2 = torch.stack([p[1] for p in pairs])
        self.shared = DenseMLP(w, f"{prefix}.shared_experts") if cfg.num_shared_experts else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(weights [T, k] fp32, expert ids [T, k]) for tokens x [T, hidden]."""
        c = self.cfg
        logits = F.linear(x.float(), self.router)
        return api.moe_route(
            logits,
            self.expert_bias,
            c.n_group,
            c.topk_group,
            c.num_experts_per_tok,
            c.norm_topk_prob,
            c.routed_scaling_factor,
        )

    def __call__(self, x: Tensor) -> Tensor:
        weights, ids = self.route(x)
        y = api.fused_moe(x, weights, ids, self.w13, self.w2)
        if self.shared is not None:
            y = y + self.shared(x)
        return y
