"""Triton MLA prefill/extend: causal attention of new tokens over cached prefix + new tokens.

Expanded form (per-head k, v). For packed sequence b with q_len new queries and kv_len keys
(prefix + new, kv_len >= q_len), query i sits at absolute position kv_len - q_len + i and
attends to key positions <= that position:
    o_i = softmax_j(scale * q_i . k_j) v_j   over j <= kv_len - q_len + i.
One program per (query tile of BM rows, head) runs a flash-attention online softmax over the
key tiles it can see. Query tiles of all sequences are numbered globally; the grid is an upper
bound so no host sync is needed. Twin: kernels.mla_ref.mla_extend_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc

_LOG2E = 1.4426950408889634


@triton.jit
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cuq_ptr, cukv_ptr, tile_seq_ptr, tile_first_ptr,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd, stride_ot, stride_oh, stride_od,
    D_QK, D_V, scale_log2e,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(tile_seq_ptr + tile)
    if seq < 0:  # grid is an upper bound on the number of query tiles
        return
    m = tile - tl.load(tile_first_ptr + seq)
    q_start = tl.load(cuq_ptr + seq).to(tl.int64)
    q_len = tl.load(cuq_ptr + seq + 1).to(tl.int64) - q_start
    kv_start = tl.load(cukv_ptr + seq).to(tl.int64)
    kv_len = tl.load(cukv_ptr + seq + 1).to(tl.int64) - kv_start
    offs_m = m * BM + tl.arange(0, BM)
    m_in = offs_m < q_len
    pos = kv_len - q_len + offs_m  # absolute position of each query
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q = tl.load(q_ptr + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh
                + offs_d[None, :] * stride_qd,
                mask=m_in[:, None] & (offs_d[None, :] < D_QK), other=0.0).to(DOT)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BDV), dtype=tl.float32)
    hi = tl.minimum(kv_len, kv_len - q_len + (m + 1) * BM)  # last visible key + 1
    for n0 in range(0, hi, BN):
        offs_n = n0 + tl.arange(0, BN)
        n_in = offs_n < kv_len
        k = tl.load(k_ptr + (kv_start + offs_n)[:, None] * stride_kt + h * stride_kh
                    + offs_d[None, :] * stride_kd,
                    mask=n_in[:, None] & (offs_d[None, :] < D_QK), other=0.0).to(DOT)
        v = tl.load(v_ptr + (kv_start + offs_n)[:, None] * stride_vt + h * stride_vh
                    + offs_dv[None, :] * stride_vd,
                    mask=n_in[:, None] & (offs_dv[None, :] < D_V), other=0.0).to(DOT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2e
        visible = n_in[None, :] & (offs_n[None, :] <= pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that see nothing yet keep m = -inf; shift by 0 for them to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v, input_precision=PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o_ptr + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh
             + offs_dv[None, :] * stride_od, out.to(o_ptr.dtype.element_ty),
             mask=m_in[:, None] & (offs_dv[None, :] < D_V))


def _check(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
           cu_seqlens_kv: Tensor) -> torch.device:
    device = tc.check_device({"q": q, "k": k, "v": v, "cu_seqlens_q": cu_seqlens_q,
                              "cu_seqlens_kv": cu_seqlens_kv})
    tc.check_dtype(q, "q", tc.FLOAT_DTYPES)
    tc.check_same_dtype({"q": q, "k": k, "v": v})
    tc.check_shape(q, "q", [None, None, None])
    _, H, Dqk = q.shape
    tc.check_shape(k, "k", [None, H, Dqk])
    tc.check_shape(v, "v", [k.shape[0], H, None])
    tc.check_shape(cu_seqlens_q, "cu_seqlens_q", [None])
    if cu_seqlens_q.shape[0] < 2:
        raise ValueError("cu_seqlens_q must hold at least two offsets")
    tc.check_shape(cu_seqlens_kv, "cu_seqlens_kv", [cu_seqlens_q.shape[0]])
    tc.check_dtype(cu_seqlens_q, "cu_seqlens_q", tc.INDEX_DTYPES)
    tc.check_dtype(cu_seqlens_kv, "cu_seqlens_kv", tc.INDEX_DTYPES)
    return device


def _tile_layout(cu_q: Tensor, total_q: int, block_m: int) -> tuple[Tensor, Tensor]:
    """(tile_seq, tile_first): the sequence of each global query tile (-1 past the end) and
    each sequence's first tile index; computed on the device without a host sync."""
    cu = cu_q.to(torch.int64)
    B = cu.shape[0] - 1
    n_tiles = (cu[1:] - cu[:-1] + block_m - 1) // block_m
    ends = torch.cumsum(n_tiles, 0)
    upper = tc.cdiv(total_q, block_m) + B
    seq = torch.searchsorted(ends, torch.arange(upper, device=cu.device), right=True)
    return torch.where(seq < B, seq, -1), ends - n_tiles


def mla_extend(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_kv: Tensor,
    scale: float, out: Tensor | None = None,
) -> Tensor:
    """Causal extend attention; same contract as kernels.mla_ref.mla_extend_ref.

    q: [Tq, H, Dqk], k: [Tkv, H, Dqk], v: [Tkv, H, Dv] packed (any strides); cu_seqlens_q /
    cu_seqlens_kv: [B + 1] with kv_len_b >= q_len_b. Returns o [Tq, H, Dv] in q.dtype
    (written into `out` when given).
    """
    device = _check(q, k, v, cu_seqlens_q, cu_seqlens_kv)
    Tq, H, Dqk = q.shape
    Dv = v.shape[2]
    o = tc.check_out(out, "out", (Tq, H, Dv), q.dtype, device)
    if Tq == 0:
        return o
    bm = 16 if tc.interpreting() else 64
    bn = 16 if tc.interpreting() else 32
    tile_seq, tile_first = _tile_layout(cu_seqlens_q, Tq, bm)
    bd = tc.next_pow2(Dqk)
    tc.launch(_extend_kernel, (tile_seq.shape[0], H),
              q, k, v, o, cu_seqlens_q, cu_seqlens_kv, tile_seq, tile_first,
              *q.stride(), *k.stride(), *v.stride(), *o.stride(),
              Dqk, Dv, float(scale) * _LOG2E,
              BM=bm, BN=bn, BD=bd, BDV=tc.next_pow2(Dv),
              DOT=tc.dot_dtype(q.dtype), PREC=tc.dot_precision(q.dtype),
              num_warps=4 if bd <= 64 else 8, num_stages=2)
    return o
