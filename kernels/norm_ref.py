"""Plain-PyTorch twins of the fused norm, rotary and page-write kernels (also the CPU path)."""

from __future__ import annotations

import torch
from torch import Tensor


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim in fp32; returns x.dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def group_rms_norm_gate_ref(
    x: Tensor, weight: Tensor, gate: Tensor, groups: int, eps: float
) -> Tensor:
    """RMSNorm over `groups` contiguous channel groups, times weight, times sigmoid(gate)."""
    T, C = x.shape
    xf = x.float().view(T, groups, C // groups)
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).view(T, C)
    return (normed * weight.float() * torch.sigmoid(gate.float())).to(x.dtype)


def _rotate_neox(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half rope on the first 2 * cos.shape[-1] dims of x [T, H, D]; rest passes."""
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def qk_norm_rope_ref(
    q: Tensor,
    k: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    positions: Tensor,
    cos_sin: Tensor,
    eps: float,
    q_scale: float,
) -> tuple[Tensor, Tensor]:
    """Lightning q/k: per-head RMSNorm over D, NeoX rope on the first rot dims, q *= q_scale."""
    half = cos_sin.shape[1] // 2
    table = cos_sin[positions.long()].float()
    cos, sin = table[:, :half], table[:, half:]
    qn = rms_norm_ref(q.float(), q_weight, eps)
    kn = rms_norm_ref(k.float(), k_weight, eps)
    q_out = _rotate_neox(qn, cos, sin) * q_scale
    return q_out.to(q.dtype), _rotate_neox(kn, cos, sin).to(k.dtype)


def rope_interleaved_ref(x: Tensor, positions: Tensor, cos_sin: Tensor) -> Tensor:
    """MLA rope: pairs (2i, 2i+1) of x [T, H, P] rotated by pos * inv_freq_i."""
    half = cos_sin.shape[1] // 2
    table = cos_sin[positions.long()].float()
    cos, sin = table[:, None, :half], table[:, None, half:]
    xf = x.float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return out.flatten(-2).to(x.dtype)


def write_latents_ref(kv_pages: Tensor, latents: Tensor, slot_mapping: Tensor) -> None:
    """kv_pages[slot // page_size, slot % page_size] = latents[t]; slot -1 skips the token."""
    page_size = kv_pages.shape[1]
    slots = slot_mapping.long()
    keep = slots >= 0
    if not bool(keep.any()):
        return
    slots = slots[keep]
    kv_pages[slots // page_size, slots % page_size] = latents[keep].to(kv_pages.dtype)


def rope_cos_sin(
    rot_dim: int, max_pos: int, theta: float, device: str | torch.device = "cpu"
) -> Tensor:
    """fp32 [max_pos, rot_dim] table: rot_dim/2 cosines then rot_dim/2 sines of pos * inv_freq."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(torch.float32).to(device)
