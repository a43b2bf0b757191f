"""The multi-token-prediction layer (index num_hidden_layers): drafts token t+2 from the main
model's final-normed hidden state at t and the embedding of token t+1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig
from engine.model.layers.decoder import DecoderLayer
from engine.parallel.group import SINGLE, TPGroup
from kernels import api

Weights = dict[str, Tensor]


class MTPLayer:
    def __init__(
        self,
        cfg: ModelConfig,
        layer_idx: int,
        w: Weights,
        cos_sin_linear: Tensor,
        cos_sin_mla: Tensor,
        group: TPGroup = SINGLE,
    ) -> None:
        p = f"model.layers.{layer_idx}"
        self.cfg = cfg
        self.block = DecoderLayer(cfg, layer_idx, w, cos_sin_linear, cos_sin_mla, group)
        self.w_enorm = w[f"{p}.enorm.weight"]
        self.w_hnorm = w[f"{p}.hnorm.weight"]
        self.w_eh = w[f"{p}.eh_proj.weight"]
        self.w_final = w[f"{p}.final_layernorm.weight"]

    def forward_full(self, next_embeds: Tensor, hidden: Tensor, positions: Tensor) -> Tensor:
        """Final-normed MTP hidden states [T, hidden] for one sequence: position t combines
        the embedding of token t+1 with the main model's normed hidden state at t."""
        eps = self.cfg.rms_norm_eps
        joined = torch.cat(
            [api.rms_norm(next_embeds, self.w_enorm, eps), api.rms_norm(hidden, self.w_hnorm, eps)],
            dim=-1,
        )
        u = F.linear(joined, self.w_eh)
        return api.rms_norm(self.block.forward_full(u, positions), self.w_final, eps)
