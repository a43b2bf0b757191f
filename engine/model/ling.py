"""The Ling-2.6 hybrid model with its three forward paths over shared layers:

1. `forward_full`: whole sequences, no cache (the reference);
2. `forward_cached` with a prefill batch: chunks of prompts written into the latent pages and
   state slots, optionally resuming from cached state + latents, with state snapshots;
3. `forward_cached` with a decode batch: one token per sequence over the paged pools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig, load_config
from engine.model.batch import ForwardBatch
from engine.model.checkpoint import load_state_dict
from engine.model.layers.decoder import DecoderLayer
from engine.model.layers.mtp import MTPLayer
from engine.model.rotary import cos_sin_table
from engine.parallel.group import SINGLE, TPGroup
from engine.parallel.sharding import RankShard, shard_weight, shardability_problems
from kernels import api


@dataclass(frozen=True)
class CacheViews:
    """Device storage the cached paths read and write.

    latent_pages: [mla_layers, pages, page_size, W]; state_slots: [slots, lin_layers, H, D, D]."""

    latent_pages: Tensor
    state_slots: Tensor


class LingModel:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: dict[str, Tensor],
        dtype: torch.dtype,
        group: TPGroup = SINGLE,
    ) -> None:
        """`weights` are this rank's slices when `group` has more than one rank: the model then
        holds heads [rank * H/world, (rank + 1) * H/world) and every rank must run the same
        forward calls in the same order (each layer all-reduces)."""
        self.cfg, self.dtype, self.group = cfg, dtype, group
        self.local_heads = cfg.num_attention_heads // group.world
        device = weights["lm_head.weight"].device
        self.device = device
        cs_linear = cos_sin_table(cfg, cfg.rotary_dim, device)
        cs_mla = cos_sin_table(cfg, cfg.qk_rope_head_dim, device)
        self.embed = weights["model.word_embeddings.weight"]
        self.w_norm = weights["model.norm.weight"]
        self.lm_head = weights["lm_head.weight"]
        self.layers = [
            DecoderLayer(cfg, i, weights, cs_linear, cs_mla, group)
            for i in range(cfg.num_hidden_layers)
        ]
        mtp_idx = cfg.num_hidden_layers
        has_mtp = f"model.layers.{mtp_idx}.eh_proj.weight" in weights
        self.mtp = MTPLayer(cfg, mtp_idx, weights, cs_linear, cs_mla, group) if has_mtp else None
        self.mla_index = {layer: j for j, layer in enumerate(cfg.mla_layers)}
        self.linear_index = {layer: j for j, layer in enumerate(cfg.linear_layers)}

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        group: TPGroup = SINGLE,
    ) -> LingModel:
        """Load the checkpoint, keeping only this rank's slice of each tensor."""
        cfg = load_config(model_dir)
        problems = shardability_problems(cfg, group.world)
        if problems:
            raise ValueError(f"tensor parallel size {group.world}: " + "; ".join(problems))
        shard = RankShard(group.rank, group.world)
        weights = load_state_dict(
            model_dir, cfg, dtype, device, lambda name, t: shard_weight(name, t, shard)
        )
        return cls(cfg, weights, dtype, group)

    def logits(self, hidden_normed: Tensor) -> Tensor:
        return F.linear(hidden_normed, self.lm_head).float()

    def final_norm(self, h: Tensor) -> Tensor:
        return api.rms_norm(h, self.w_norm, self.cfg.rms_norm_eps)

    @torch.inference_mode()
    def forward_full(self, token_ids: list[int]) -> tuple[Tensor, Tensor]:
        """(logits [n, V] fp32, final-normed hidden [n, hidden]) for one whole sequence."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        positions = torch.arange(len(token_ids), device=self.device)
        h = self.embed[ids]
        for layer in self.layers:
            h = layer.forward_full(h, positions)
        normed = self.final_norm(h)
        return self.logits(normed), normed

    @torch.inference_mode()
    def mtp_logits_full(self, token_ids: list[int], hidden_normed: Tensor) -> Tensor:
        """MTP draft logits [n-1, V]: row t predicts token t+2 from hidden t and token t+1."""
        if self.mtp is None:
            raise ValueError("this checkpoint has no MTP layer")
        ids = torch.tensor(token_ids[1:], dtype=torch.long, device=self.device)
        positions = torch.arange(len(token_ids) - 1, device=self.device)
        h = self.mtp.forward_full(self.embed[ids], hidden_normed[:-1], positions)
        return self.logits(h)

    @torch.inference_mode()
    def forward_cached(
        self,
        token_ids: Tensor,
        batch: ForwardBatch,
        cache: CacheViews,
        snapshots: Tensor | None = None,
        after_layer: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Final-normed hidden state of each sequence's last new token: [B, hidden].

        `snapshots` ([N, lin_layers, H, D, D] fp32) receives the state at batch.snapshot_ends.
        `after_layer(i)` runs once layer i has written its latents or states (layer streaming)."""
        h = self.embed[token_ids]
        for i, layer in enumerate(self.layers):
            if layer.is_mla:
                view = cache.latent_pages[self.mla_index[i]]
                h = layer.forward_cached(h, batch, view, None)
            else:
                j = self.linear_index[i]
                snap = snapshots[:, j] if snapshots is not None else None
                h = layer.forward_cached(h, batch, cache.state_slots[:, j], snap)
            if after_layer is not None:
                after_layer(i)
        last = batch.cu_seqlens[1:] - 1
        return self.final_norm(h[last])
