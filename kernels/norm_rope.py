"""Triton fused norms, rotary embeddings and the latent page write (all math in fp32).

- rms_norm: x * rsqrt(mean(x^2) + eps) * weight over the last dim.
- group_rms_norm_gate: RMSNorm over `groups` contiguous channel groups of x [T, C], times
  weight [C], times sigmoid(gate) (the Lightning output gate).
- qk_norm_rope: per-head RMSNorm of q and k [T, H, D], NeoX rotate-half rope on the first
  rot = cos_sin.shape[1] dims of each head (x1 = x[:half], x2 = x[half:rot]:
  out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin), then q *= q_scale.
- rope_interleaved: pairs (2i, 2i+1) of x [T, H, P] rotated by angle pos * inv_freq_i (MLA).
- write_latents: kv_pages[slot // page_size, slot % page_size] = latents[t]; slot -1 skips.
cos_sin is fp32 [max_pos, rot]: rot/2 cosines then rot/2 sines. Twins: kernels.norm_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, o_ptr, N, stride_xr, stride_xc, stride_or, eps,
                     BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    n_in = offs < N
    x = tl.load(x_ptr + row * stride_xr + offs * stride_xc, mask=n_in, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=n_in, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(o_ptr + row * stride_or + offs, (x * rstd * w).to(o_ptr.dtype.element_ty), mask=n_in)


@triton.jit
def _group_norm_gate_kernel(x_ptr, w_ptr, gate_ptr, o_ptr, GROUP, stride_xt, stride_xc,
                            stride_gt, stride_gc, stride_ot, eps, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * GROUP + tl.arange(0, BLOCK)
    c_in = tl.arange(0, BLOCK) < GROUP
    x = tl.load(x_ptr + t * stride_xt + offs * stride_xc, mask=c_in, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + t * stride_gt + offs * stride_gc, mask=c_in,
                   other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=c_in, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / GROUP + eps)
    out = x * rstd * w * tl.sigmoid(gate)
    tl.store(o_ptr + t * stride_ot + offs, out.to(o_ptr.dtype.element_ty), mask=c_in)


@triton.jit
def _norm_rope_heads(x_ptr, w_ptr, cs_ptr, o_ptr, heads, H, D, half, eps, scale, stride_h,
                     stride_d, stride_oh, BH: tl.constexpr, BLOCK: tl.constexpr):
    """A [BH, D] block of one token's heads: RMSNorm over D, rotate-half rope on the first
    2 * half dims, times scale. x_ptr / o_ptr point at the token's row."""
    offs = tl.arange(0, BLOCK)
    mask = (heads < H)[:, None] & (offs < D)[None, :]
    rows = heads[:, None] * stride_h
    x = tl.load(x_ptr + rows + offs[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=offs < D, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]
    rotated = offs < 2 * half
    first = offs < half
    partner = tl.where(first, offs + half, offs - half)  # the other element of the pair
    p_mask = mask & rotated[None, :]
    xp = tl.load(x_ptr + rows + partner[None, :] * stride_d, mask=p_mask,
                 other=0.0).to(tl.float32)
    wp = tl.load(w_ptr + partner, mask=rotated, other=0.0).to(tl.float32)
    freq = tl.where(first, offs, offs - half)
    cos = tl.load(cs_ptr + freq, mask=rotated, other=1.0)[None, :]
    sin = tl.load(cs_ptr + half + freq, mask=rotated, other=0.0)[None, :]
    y = x * rstd * w[None, :]
    yp = xp * rstd * wp[None, :]
    out = tl.where(first[None, :], y * cos - yp * sin, y * cos + yp * sin)
    out = tl.where(rotated[None, :], out, y) * scale
    tl.store(o_ptr + heads[:, None] * stride_oh + offs[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, k_ptr, qw_ptr, kw_ptr, pos_ptr, cs_ptr, qo_ptr, ko_ptr, H, D, half, eps, q_scale,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd, stride_cs,
    stride_qot, stride_qoh, stride_kot, stride_koh, BH: tl.constexpr, BLOCK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    cs = cs_ptr + tl.load(pos_ptr + t).to(tl.int64) * stride_cs
    _norm_rope_heads(q_ptr + t * stride_qt, qw_ptr, cs, qo_ptr + t * stride_qot, heads, H, D,
                     half, eps, q_scale, stride_qh, stride_qd, stride_qoh, BH, BLOCK)
    _norm_rope_heads(k_ptr + t * stride_kt, kw_ptr, cs, ko_ptr + t * stride_kot, heads, H, D,
                     half, eps, 1.0, stride_kh, stride_kd, stride_koh, BH, BLOCK)


@triton.jit
def _rope_interleaved_kernel(x_ptr, pos_ptr, cs_ptr, o_ptr, H, P, stride_xt, stride_xh,
                             stride_xp, stride_cs, stride_ot, stride_oh, BH: tl.constexpr,
                             BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BH + tl.arange(0, BH)
    offs = tl.arange(0, BLOCK)
    mask = (heads < H)[:, None] & (offs < P)[None, :]
    rows = x_ptr + t * stride_xt + heads[:, None] * stride_xh
    x = tl.load(rows + offs[None, :] * stride_xp, mask=mask, other=0.0).to(tl.float32)
    partner = tl.load(rows + (offs ^ 1)[None, :] * stride_xp, mask=mask,
                      other=0.0).to(tl.float32)
    cs = cs_ptr + tl.load(pos_ptr + t).to(tl.int64) * stride_cs
    cos = tl.load(cs + offs // 2, mask=offs < P, other=1.0)[None, :]
    sin = tl.load(cs + P // 2 + offs // 2, mask=offs < P, other=0.0)[None, :]
    even = (offs % 2 == 0)[None, :]
    out = tl.where(even, x * cos - partner * sin, x * cos + partner * sin)
    tl.store(o_ptr + t * stride_ot + heads[:, None] * stride_oh + offs[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write_latents_kernel(pages_ptr, lat_ptr, slots_ptr, W, page_size, stride_pn, stride_pt,
                          stride_pw, stride_lt, stride_lw, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    if slot < 0:
        return
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    w_in = offs < W
    vals = tl.load(lat_ptr + t * stride_lt + offs * stride_lw, mask=w_in)
    dest = pages_ptr + (slot // page_size) * stride_pn + (slot % page_size) * stride_pt
    tl.store(dest + offs * stride_pw, vals.to(pages_ptr.dtype.element_ty), mask=w_in)


def rms_norm(x: Tensor, weight: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    """RMSNorm over the last dim of x [..., N] with weight [N]; fp32 math, returns x.dtype."""
    device = tc.check_device({"x": x, "weight": weight})
    tc.check_dtype(x, "x", tc.FLOAT_DTYPES)
    tc.check_dtype(weight, "weight", tc.FLOAT_DTYPES)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim")
    N = x.shape[-1]
    tc.check_shape(weight, "weight", [N])
    rows = x.reshape(-1, N)  # a view when the leading dims collapse, else a copy
    o = tc.check_out(out, "out", tuple(x.shape), x.dtype, device)
    o_rows = o.view(-1, N) if o.is_contiguous() else None
    if o_rows is None:
        raise ValueError("out must be contiguous")
    if rows.shape[0]:
        tc.launch(_rms_norm_kernel, (rows.shape[0],), rows, weight.contiguous(), o_rows, N,
                  *rows.stride(), o_rows.stride(0), float(eps),
                  BLOCK=tc.next_pow2(N, minimum=1), num_warps=4 if N <= 4096 else 8)
    return o


def group_rms_norm_gate(x: Tensor, weight: Tensor, gate: Tensor, groups: int, eps: float,
                        out: Tensor | None = None) -> Tensor:
    """x [T, C]: RMSNorm per group of C / groups channels, * weight [C] * sigmoid(gate [T, C])."""
    device = tc.check_device({"x": x, "weight": weight, "gate": gate})
    tc.check_dtype(x, "x", tc.FLOAT_DTYPES)
    tc.check_shape(x, "x", [None, None])
    T, C = x.shape
    tc.check_shape(gate, "gate", [T, C])
    tc.check_dtype(gate, "gate", tc.FLOAT_DTYPES)
    tc.check_shape(weight, "weight", [C])
    if groups < 1 or C % groups:
        raise ValueError(f"groups={groups} must divide the {C} channels")
    o = tc.check_out(out, "out", (T, C), x.dtype, device)
    if T:
        group = C // groups
        tc.launch(_group_norm_gate_kernel, (T, groups), x, weight.contiguous(), gate, o, group,
                  *x.stride(), *gate.stride(), o.stride(0), float(eps),
                  BLOCK=tc.next_pow2(group, minimum=1), num_warps=4)
    return o


def _check_rope(x: Tensor, name: str, positions: Tensor, cos_sin: Tensor) -> torch.device:
    device = tc.check_device({name: x, "positions": positions, "cos_sin": cos_sin})
    tc.check_dtype(x, name, tc.FLOAT_DTYPES)
    tc.check_shape(x, name, [None, None, None])
    tc.check_shape(positions, "positions", [x.shape[0]])
    tc.check_dtype(positions, "positions", tc.INDEX_DTYPES)
    tc.check_shape(cos_sin, "cos_sin", [None, None])
    tc.check_dtype(cos_sin, "cos_sin", [torch.float32])
    if cos_sin.shape[1] % 2 or cos_sin.stride(1) != 1:
        raise ValueError("cos_sin must have an even, unit-stride last dim")
    return device


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, positions: Tensor,
                 cos_sin: Tensor, eps: float, q_scale: float) -> tuple[Tensor, Tensor]:
    """Lightning q/k [T, H, D]: per-head RMSNorm (weights [D]), partial NeoX rope on the first
    cos_sin.shape[1] dims, q *= q_scale. Returns new (q, k) in q.dtype / k.dtype."""
    device = _check_rope(q, "q", positions, cos_sin)
    T, H, D = q.shape
    tc.check_shape(k, "k", [T, H, D])
    tc.check_dtype(k, "k", tc.FLOAT_DTYPES)
    tc.check_shape(q_weight, "q_weight", [D])
    tc.check_shape(k_weight, "k_weight", [D])
    tc.check_device({"q": q, "k": k, "q_weight": q_weight, "k_weight": k_weight})
    if cos_sin.shape[1] > D:
        raise ValueError(f"rotary dims {cos_sin.shape[1]} exceed head dim {D}")
    q_out = torch.empty((T, H, D), dtype=q.dtype, device=device)
    k_out = torch.empty((T, H, D), dtype=k.dtype, device=device)
    if T:
        bh = min(tc.next_pow2(H, minimum=1), 16)
        tc.launch(_qk_norm_rope_kernel, (T, tc.cdiv(H, bh)), q, k, q_weight.contiguous(),
                  k_weight.contiguous(), positions, cos_sin, q_out, k_out, H, D,
                  cos_sin.shape[1] // 2, float(eps), float(q_scale), *q.stride(), *k.stride(),
                  cos_sin.stride(0), *q_out.stride()[:2], *k_out.stride()[:2],
                  BH=bh, BLOCK=tc.next_pow2(D, minimum=2), num_warps=4)
    return q_out, k_out


def rope_interleaved(x: Tensor, positions: Tensor, cos_sin: Tensor) -> Tensor:
    """MLA rope on x [T, H, P] (P = cos_sin.shape[1]), pairs (2i, 2i+1). Returns x.dtype."""
    device = _check_rope(x, "x", positions, cos_sin)
    T, H, P = x.shape
    if cos_sin.shape[1] != P:
        raise ValueError(f"cos_sin has {cos_sin.shape[1]} dims, x has {P}")
    out = torch.empty((T, H, P), dtype=x.dtype, device=device)
    if T:
        bh = min(tc.next_pow2(H, minimum=1), 32)
        tc.launch(_rope_interleaved_kernel, (T, tc.cdiv(H, bh)), x, positions, cos_sin, out, H,
                  P, *x.stride(), cos_sin.stride(0), *out.stride()[:2], BH=bh,
                  BLOCK=tc.next_pow2(P, minimum=2), num_warps=4)
    return out


def write_latents(kv_pages: Tensor, latents: Tensor, slot_mapping: Tensor) -> None:
    """kv_pages [num_pages, page_size, W] <- latents [T, W] at slot_mapping [T] (-1 = skip)."""
    tc.check_device({"kv_pages": kv_pages, "latents": latents, "slot_mapping": slot_mapping})
    tc.check_shape(kv_pages, "kv_pages", [None, None, None])
    tc.check_dtype(kv_pages, "kv_pages", tc.FLOAT_DTYPES)
    tc.check_writable(kv_pages, "kv_pages")
    W = kv_pages.shape[2]
    tc.check_shape(latents, "latents", [None, W])
    tc.check_dtype(latents, "latents", tc.FLOAT_DTYPES)
    tc.check_shape(slot_mapping, "slot_mapping", [latents.shape[0]])
    tc.check_dtype(slot_mapping, "slot_mapping", tc.INDEX_DTYPES)
    if latents.shape[0]:
        block = min(1024, tc.next_pow2(W, minimum=1))
        tc.launch(_write_latents_kernel, (latents.shape[0], tc.cdiv(W, block)), kv_pages,
                  latents, slot_mapping, W, kv_pages.shape[1], *kv_pages.stride(),
                  *latents.stride(), BLOCK=block, num_warps=4)
