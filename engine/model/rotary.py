"""Rotary tables for both attention kinds, with YaRN frequency scaling when configured."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.config import ModelConfig, RopeScaling, yarn_mscale


def _yarn_inv_freq(dim: int, base: float, s: RopeScaling) -> tuple[Tensor, float]:
    def correction_dim(rotations: float) -> float:
        orig = s.original_max_position_embeddings
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(s.beta_fast)), 0)
    high = min(math.ceil(correction_dim(s.beta_slow)), dim - 1)
    exps = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    extrapolated = 1.0 / base**exps
    interpolated = extrapolated / s.factor
    ramp = (torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)
    keep_extrapolated = 1.0 - ramp.clamp(0, 1)
    inv_freq = interpolated * (1 - keep_extrapolated) + extrapolated * keep_extrapolated
    attn_factor = yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
    return inv_freq, attn_factor


def cos_sin_table(cfg: ModelConfig, dim: int, device: torch.device | str) -> Tensor:
    """fp32 [max_pos, dim]: dim/2 cosines then dim/2 sines of position * inv_freq_i."""
    base = cfg.rope_theta
    if cfg.rope_scaling is None:
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        attn_factor = 1.0
    else:
        inv_freq, attn_factor = _yarn_inv_freq(dim, base, cfg.rope_scaling)
    angles = torch.arange(cfg.max_position_embeddings, dtype=torch.float64)[:, None] * inv_freq
    table = torch.cat([angles.cos(), angles.sin()], dim=-1) * attn_factor
    return table.to(torch.float32).to(device)
