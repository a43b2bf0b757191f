"""Which slice of each checkpoint tensor a tensor-parallel rank holds.

Attention is split by heads (Lightning q/k/v, gate and group norm; MLA q_b and kv_b), every
SwiGLU MLP by its intermediate dimension (dense, each routed expert, the shared expert), and
the matrices that consume those slices (attention `dense`, `down_proj`) by input columns, so
that each layer's output is a partial sum that one all-reduce completes. Everything else
(embeddings, norms, the router, MLA's latent projections, the LM head) is replicated, which
keeps the MLA latent cache whole on every rank and makes each rank's Lightning state exactly
its heads' rows of the full state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.config import ModelConfig

_MLP = r"\.mlp\.(?:experts\.\d+\.|shared_experts\.)?"


@dataclass(frozen=True)
class RankShard:
    rank: int
    world: int

    def part(self, t: Tensor, dim: int, groups: int = 1) -> Tensor:
        """A copy of this rank's slice of `t` along `dim`, which is viewed as
        [groups, world * n] (groups=3 for a fused q/k/v whose thirds are each split by heads).
        A copy, so that the whole tensor can be freed."""
        if self.world == 1:
            return t
        shape = list(t.shape)
        split = t.reshape(*shape[:dim], groups, self.world, shape[dim] // groups // self.world,
                          *shape[dim + 1 :])  # fmt: skip
        part = split.select(dim + 1, self.rank).reshape(*shape[:dim], -1, *shape[dim + 1 :])
        return part.clone(memory_format=torch.contiguous_format)


FULL = RankShard(0, 1)


def shardability_problems(cfg: ModelConfig, world: int) -> list[str]:
    """Why `world` ranks cannot split this model evenly; empty when they can."""
    checks = {
        "num_attention_heads": cfg.num_attention_heads,
        "group_norm_size": cfg.group_norm_size,
        "intermediate_size": cfg.intermediate_size,
        "moe_intermediate_size": cfg.moe_intermediate_size,
    }
    if cfg.num_shared_experts:
        checks["shared_expert_intermediate_size"] = cfg.shared_expert_intermediate_size
    return [f"{k}={v} is not divisible by {world}" for k, v in checks.items() if v % world]


def shard_weight(name: str, t: Tensor, shard: RankShard) -> Tensor:
    """The slice of checkpoint tensor `name` that `shard` holds (the tensor itself if whole)."""
    if shard.world == 1:
        return t
    if name.endswith(".attention.query_key_value.weight"):
        return shard.part(t, 0, groups=3)
    if re.search(r"\.attention\.(g_proj|g_norm|q_b_proj|kv_b_proj)\.weight$", name):
        return shard.part(t, 0)
    if re.search(r"\.attention\.dense\.weight$", name):
        return shard.part(t, 1)
    if re.search(_MLP + r"(gate_proj|up_proj)\.weight$", name):
        return shard.part(t, 0)
    if re.search(_MLP + r"down_proj\.weight$", name):
        return shard.part(t, 1)
    return t
