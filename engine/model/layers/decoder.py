"""One pre-norm residual block: h = x + Attn(norm(x)); out = h + MLP(norm(h))."""

from __future__ import annotations

from torch import Tensor

from engine.config import ModelConfig
from engine.model.batch import ForwardBatch
from engine.model.layers.lightning import LightningAttention
from engine.model.layers.mla import MLAttention
from engine.model.layers.mlp import DenseMLP, MoEBlock
from engine.parallel.group import SINGLE, TPGroup
from engine.parallel.sharding import RankShard
from kernels import api

Weights = dict[str, Tensor]


class DecoderLayer:
    def __init__(
        self,
        cfg: ModelConfig,
        layer_idx: int,
        w: Weights,
        cos_sin_linear: Tensor,
        cos_sin_mla: Tensor,
        group: TPGroup = SINGLE,
    ) -> None:
        """`w` holds this rank's slices (engine.parallel.sharding); attention and MLP outputs
        are partial sums that `group.all_reduce` completes before each residual add."""
        p = f"model.layers.{layer_idx}"
        self.cfg, self.layer_idx, self.group = cfg, layer_idx, group
        shard = RankShard(group.rank, group.world)
        self.is_mla = cfg.is_mla_layer(layer_idx)
        self.attn: MLAttention | LightningAttention
        if self.is_mla:
            self.attn = MLAttention(cfg, w, f"{p}.attention", cos_sin_mla, shard.world)
        else:
            self.attn = LightningAttention(
                cfg, layer_idx, w, f"{p}.attention", cos_sin_linear, shard
            )
        self.mlp = (
            MoEBlock(cfg, w, f"{p}.mlp") if cfg.is_moe_layer(layer_idx) else DenseMLP(w, f"{p}.mlp")
        )
        self.w_in_norm = w[f"{p}.input_layernorm.weight"]
        self.w_post_norm = w[f"{p}.post_attention_layernorm.weight"]

    def _mlp_residual(self, h: Tensor) -> Tensor:
        mlp = self.mlp(api.rms_norm(h, self.w_post_norm, self.cfg.rms_norm_eps))
        return h + self.group.all_reduce(mlp)

    def forward_full(self, x: Tensor, positions: Tensor) -> Tensor:
        normed = api.rms_norm(x, self.w_in_norm, self.cfg.rms_norm_eps)
        return self._mlp_residual(
            x + self.group.all_reduce(self.attn.forward_full(normed, positions))
        )

    def forward_cached(
        self, x: Tensor, batch: ForwardBatch, cache: Tensor, snapshots: Tensor | None
    ) -> Tensor:
        """`cache` is this layer's latent pages (MLA) or state slots (Lightning)."""
        normed = api.rms_norm(x, self.w_in_norm, self.cfg.rms_norm_eps)
        if isinstance(self.attn, MLAttention):
            attn = self.attn.forward_cached(normed, batch, cache)
        else:
            attn = self.attn.forward_cached(normed, batch, cache, snapshots)
        return self._mlp_residual(x + self.group.all_reduce(attn))
