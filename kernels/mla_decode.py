"""Triton absorbed MLA decode over the paged latent pool, split over the context (flash-decoding).

Per row b and head h, over the first context_lens[b] cached tokens j (token j lives at page
block_tables[b, j // page_size], row j % page_size, as [c_kv (R) | k_pe (P)]):
    logit_j = scale * (q_latent . c_kv_j + q_pe . k_pe_j),  o_latent = sum_j softmax(logit)_j c_kv_j
Pass 1 (`_split_kernel`): one program per (row, context split, head block) runs an online
softmax over its slice of the context and stores a partial output and its base-2 log-sum-exp.
Pass 2 (`_combine_kernel`): one program per (row, head, latent block) merges the splits.
Rows with context 0 get zeros. All heads of a block share each latent tile load (MQA-style).
Twin: kernels.mla_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc

_LOG2E = 1.4426950408889634


@triton.jit
def _split_kernel(
    ql_ptr, qp_ptr, kv_ptr, bt_ptr, ctx_ptr, part_o_ptr, part_lse_ptr,
    stride_lb, stride_lh, stride_lr, stride_pb, stride_ph, stride_pp,
    stride_kn, stride_kt, stride_kw, stride_bb, stride_bn,
    H, R, P, page_size, split_len, num_splits, scale_log2e,
    BH: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
):
    b = tl.program_id(0)
    split = tl.program_id(1)
    offs_h = tl.program_id(2) * BH + tl.arange(0, BH)
    offs_r = tl.arange(0, BR)
    offs_p = tl.arange(0, BP)
    h_in = offs_h < H
    ctx = tl.load(ctx_ptr + b)
    lo = split * split_len
    hi = tl.minimum(lo + split_len, ctx)
    part = (b * num_splits + split).to(tl.int64) * H + offs_h  # [B, splits, H] row index
    if lo >= hi:  # empty split: lse -inf marks it for the combine pass
        tl.store(part_lse_ptr + part, tl.full((BH,), float("-inf"), tl.float32), mask=h_in)
        return
    ql = tl.load(ql_ptr + b * stride_lb + offs_h[:, None] * stride_lh + offs_r[None, :] * stride_lr,
                 mask=h_in[:, None] & (offs_r[None, :] < R), other=0.0).to(DOT)
    qp = tl.load(qp_ptr + b * stride_pb + offs_h[:, None] * stride_ph + offs_p[None, :] * stride_pp,
                 mask=h_in[:, None] & (offs_p[None, :] < P), other=0.0).to(DOT)
    m_i = tl.full((BH,), float("-inf"), tl.float32)
    l_i = tl.zeros((BH,), dtype=tl.float32)
    acc = tl.zeros((BH, BR), dtype=tl.float32)
    for start in range(lo, hi, BN):
        offs_n = start + tl.arange(0, BN)
        n_in = offs_n < hi
        page = tl.load(bt_ptr + b * stride_bb + (offs_n // page_size) * stride_bn,
                       mask=n_in, other=0).to(tl.int64)
        tok = page * stride_kn + (offs_n % page_size) * stride_kt
        c = tl.load(kv_ptr + tok[:, None] + offs_r[None, :] * stride_kw,
                    mask=n_in[:, None] & (offs_r[None, :] < R), other=0.0).to(DOT)
        kp = tl.load(kv_ptr + tok[:, None] + (R + offs_p[None, :]) * stride_kw,
                     mask=n_in[:, None] & (offs_p[None, :] < P), other=0.0).to(DOT)
        logits = tl.dot(ql, tl.trans(c), input_precision=PREC)
        logits = tl.dot(qp, tl.trans(kp), acc=logits, input_precision=PREC)
        logits = tl.where(n_in[None, :], logits * scale_log2e, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(logits - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), c, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(part_o_ptr + part[:, None] * R + offs_r[None, :], acc,
             mask=h_in[:, None] & (offs_r[None, :] < R))
    tl.store(part_lse_ptr + part, m_i + tl.log2(l_i), mask=h_in)


@triton.jit
def _combine_kernel(
    part_o_ptr, part_lse_ptr, ctx_ptr, o_ptr,
    stride_ob, stride_oh, stride_or,
    H, R, num_splits,
    BR: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_r = tl.program_id(2) * BR + tl.arange(0, BR)
    r_in = offs_r < R
    ctx = tl.load(ctx_ptr + b)
    acc = tl.zeros((BR,), dtype=tl.float32)
    if ctx > 0:  # then at least one split is non-empty, so m is finite
        first = (b * num_splits).to(tl.int64) * H + h
        m = tl.load(part_lse_ptr + first)
        for s in range(1, num_splits):
            m = tl.maximum(m, tl.load(part_lse_ptr + first + s * H))
        total = 0.0
        for s in range(0, num_splits):
            row = first + s * H
            lse = tl.load(part_lse_ptr + row)
            w = tl.exp2(lse - m)  # 0 for empty splits (lse = -inf), whose output is unwritten
            part = tl.load(part_o_ptr + row * R + offs_r, mask=r_in, other=0.0)
            part = tl.where(lse > float("-inf"), part, 0.0)
            acc += w * part
            total += w
        acc = acc / total
    tl.store(o_ptr + b * stride_ob + h * stride_oh + offs_r * stride_or,
             acc.to(o_ptr.dtype.element_ty), mask=r_in)


def _check(q_latent: Tensor, q_pe: Tensor, kv_pages: Tensor, block_tables: Tensor,
           context_lens: Tensor) -> torch.device:
    device = tc.check_device({"q_latent": q_latent, "q_pe": q_pe, "kv_pages": kv_pages,
                              "block_tables": block_tables, "context_lens": context_lens})
    tc.check_dtype(q_latent, "q_latent", tc.FLOAT_DTYPES)
    tc.check_same_dtype({"q_latent": q_latent, "q_pe": q_pe})
    tc.check_dtype(kv_pages, "kv_pages", tc.FLOAT_DTYPES)  # cast to q's dtype after loading
    tc.check_shape(q_latent, "q_latent", [None, None, None])
    B, H, R = q_latent.shape
    tc.check_shape(q_pe, "q_pe", [B, H, None])
    tc.check_shape(kv_pages, "kv_pages", [None, None, R + q_pe.shape[2]])
    tc.check_shape(block_tables, "block_tables", [B, None])
    tc.check_dtype(block_tables, "block_tables", tc.INDEX_DTYPES)
    tc.check_shape(context_lens, "context_lens", [B])
    tc.check_dtype(context_lens, "context_lens", tc.INDEX_DTYPES)
    return device


def _pick_splits(batch: int, head_blocks: int, max_ctx: int, min_split: int,
                 device: torch.device) -> int:
    """Enough programs to fill the device about twice, no split shorter than min_split tokens
    (shorter splits cost more in partial outputs to merge than they save)."""
    want = tc.cdiv(2 * tc.sm_count(device), max(1, batch * head_blocks))
    return max(1, min(want, tc.cdiv(max_ctx, min_split)))


def mla_decode(
    q_latent: Tensor, q_pe: Tensor, kv_pages: Tensor, block_tables: Tensor,
    context_lens: Tensor, scale: float, num_splits: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Absorbed MLA decode; same contract as kernels.mla_ref.mla_decode_ref.

    q_latent: [B, H, R], q_pe: [B, H, P]; kv_pages: [num_pages, page_size, R + P] (any float);
    block_tables: int [B, max_blocks]; context_lens: int [B] (0 = padding row -> zeros).
    The context is split evenly over block_tables.shape[1] * page_size tokens (size the table
    to the batch's longest context); `num_splits` overrides the automatic choice.
    Returns o_latent [B, H, R] in q_latent.dtype (written into `out` when given).
    """
    device = _check(q_latent, q_pe, kv_pages, block_tables, context_lens)
    B, H, R = q_latent.shape
    P = q_pe.shape[2]
    o = tc.check_out(out, "out", (B, H, R), q_latent.dtype, device)
    if B == 0:
        return o
    page_size = kv_pages.shape[1]
    max_ctx = max(1, block_tables.shape[1] * page_size)
    bh = min(32, tc.next_pow2(H))
    bn = 16 if tc.interpreting() else 32
    head_blocks = tc.cdiv(H, bh)
    min_split = bn if tc.interpreting() else 4 * bn
    splits = num_splits or _pick_splits(B, head_blocks, max_ctx, min_split, device)
    split_len = tc.cdiv(tc.cdiv(max_ctx, splits), bn) * bn
    splits = tc.cdiv(max_ctx, split_len)
    part_o = torch.empty((B, splits, H, R), dtype=torch.float32, device=device)
    part_lse = torch.empty((B, splits, H), dtype=torch.float32, device=device)
    dtype = q_latent.dtype
    tc.launch(_split_kernel, (B, splits, head_blocks),
              q_latent, q_pe, kv_pages, block_tables, context_lens, part_o, part_lse,
              *q_latent.stride(), *q_pe.stride(), *kv_pages.stride(), *block_tables.stride(),
              H, R, P, page_size, split_len, splits, float(scale) * _LOG2E,
              BH=bh, BR=tc.next_pow2(R), BP=tc.next_pow2(P), BN=bn,
              DOT=tc.dot_dtype(dtype), PREC=tc.dot_precision(dtype), num_warps=8, num_stages=2)
    br = min(128, tc.next_pow2(R, minimum=1))
    tc.launch(_combine_kernel, (B, H, tc.cdiv(R, br)), part_o, part_lse, context_lens, o,
              *o.stride(), H, R, splits, BR=br, num_warps=4)
    return o
