"""Lightning linear-attention layer (7 of every 8 layers of Ling-2.6).

Projection: qkv -> per-head RMSNorm on q, k -> NeoX rope on the first rotary_dim dims ->
q *= head_dim^-0.5. Core: the decayed linear recurrence (kernels.lightning_ref). Output:
group RMSNorm * sigmoid(g_proj(x)) -> dense. The per-sequence state is [H, D, D] fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig
from engine.model.batch import ForwardBatch
from engine.parallel.sharding import FULL, RankShard
from kernels import api
from kernels.lightning_ref import lightning_recurrent_ref

Weights = dict[str, Tensor]


class LightningAttention:
    def __init__(
        self,
        cfg: ModelConfig,
        layer_idx: int,
        w: Weights,
        prefix: str,
        cos_sin: Tensor,
        shard: RankShard = FULL,
    ) -> None:
        """With tensor parallelism this rank holds heads [rank * H/world, (rank+1) * H/world)
        and their group-norm groups; `dense` then yields a partial sum."""
        self.cfg = cfg
        self.heads, self.head_dim = cfg.num_attention_heads // shard.world, cfg.head_dim
        self.norm_groups = cfg.group_norm_size // shard.world
        self.w_qkv = w[f"{prefix}.query_key_value.weight"]
        self.w_qnorm = w[f"{prefix}.query_layernorm.weight"]
        self.w_knorm = w[f"{prefix}.key_layernorm.weight"]
        self.w_gate = w[f"{prefix}.g_proj.weight"]
        self.w_gnorm = w[f"{prefix}.g_norm.weight"]
        self.w_dense = w[f"{prefix}.dense.weight"]
        self.cos_sin = cos_sin
        device = self.w_qkv.device
        decay = torch.tensor(cfg.lightning_log_decay(layer_idx), device=device)
        self.log_decay = shard.part(decay, 0)

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (normed, roped, scaled), k (normed, roped), v: each [T, H, D]."""
        qkv = F.linear(x, self.w_qkv).view(x.shape[0], 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(1)
        q, k = api.qk_norm_rope(
            q,
            k,
            self.w_qnorm,
            self.w_knorm,
            positions,
            self.cos_sin,
            self.cfg.rms_norm_eps,
            self.head_dim**-0.5,
        )
        return q, k, v

    def output(self, o: Tensor, x: Tensor) -> Tensor:
        gate = F.linear(x, self.w_gate)
        flat = o.reshape(o.shape[0], self.heads * self.head_dim).to(x.dtype)
        y = api.group_rms_norm_gate(
            flat, self.w_gnorm, gate, self.norm_groups, self.cfg.rms_norm_eps
        )
        return F.linear(y, self.w_dense)

    def forward_full(self, x: Tensor, positions: Tensor) -> Tensor:
        """One whole sequence from a zero state, token by token (the reference)."""
        q, k, v = self.project(x, positions)
        o, _ = lightning_recurrent_ref(q, k, v, self.log_decay)
        return self.output(o, x)

    def forward_cached(
        self,
        x: Tensor,
        batch: ForwardBatch,
        states: Tensor,
        snapshots: Tensor | None,
    ) -> Tensor:
        """Prefill chunk or decode step; `states` is this layer's [slots, H, D, D] view."""
        q, k, v = self.project(x, batch.positions)
        if batch.is_decode:
            o = api.lightning_decode(q, k, v, self.log_decay, states, batch.final_slots)
        else:
            o = api.lightning_prefill(
                q,
                k,
                v,
                self.log_decay,
                batch.cu_seqlens,
                states,
                batch.initial_slots,
                batch.final_slots,
                chunk_size=batch.chunk_size,
                snapshot_ends=batch.snapshot_ends,
                snapshots=snapshots,
            )
        return self.output(o, x)
