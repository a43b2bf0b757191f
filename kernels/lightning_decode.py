"""Triton Lightning decode: one recurrence step per sequence, state slots updated in place.

For row b with slot s = slots[b] >= 0 and every head h:
    S = exp(g_h) * states[s, h] + k_b^T v_b,   o_b = q_b S,   states[s, h] = S
A row with slot -1 is padding: its output row is zero and no state is read or written.
One program per (row, head, value block) holds a [D, BV] fp32 block of the state; the kernel is
bound by reading and writing the fp32 state once. Twin: kernels.lightning_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, g_ptr, states_ptr, slots_ptr, o_ptr,
    stride_qb, stride_qh, stride_qd, stride_kb, stride_kh, stride_kd,
    stride_vb, stride_vh, stride_vd, stride_ob, stride_oh, stride_od,
    stride_ss, stride_sh, stride_sk, stride_sv,
    D_K, D_V,
    BK: tl.constexpr, BV: tl.constexpr,
):
    row = tl.program_id(0)
    h = tl.program_id(1)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    offs_k = tl.arange(0, BK)
    v_in = offs_v < D_V
    k_in = offs_k < D_K
    o_ptrs = o_ptr + row * stride_ob + h * stride_oh + offs_v * stride_od
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot < 0:
        tl.store(o_ptrs, tl.zeros((BV,), dtype=tl.float32).to(o_ptr.dtype.element_ty), mask=v_in)
        return
    s_ptrs = (states_ptr + slot * stride_ss + h * stride_sh
              + offs_k[:, None] * stride_sk + offs_v[None, :] * stride_sv)
    s_mask = k_in[:, None] & v_in[None, :]
    state = tl.load(s_ptrs, mask=s_mask, other=0.0)
    q = tl.load(q_ptr + row * stride_qb + h * stride_qh + offs_k * stride_qd,
                mask=k_in, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + row * stride_kb + h * stride_kh + offs_k * stride_kd,
                mask=k_in, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + row * stride_vb + h * stride_vh + offs_v * stride_vd,
                mask=v_in, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + h).to(tl.float32)
    state = tl.exp(g) * state + k[:, None] * v[None, :]
    out = tl.sum(q[:, None] * state, axis=0)
    tl.store(s_ptrs, state, mask=s_mask)
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=v_in)


def lightning_decode(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, states: Tensor, slots: Tensor,
    out: Tensor | None = None,
) -> Tensor:
    """One Lightning step per row; same contract as lightning_decode_ref.

    q, k: [B, H, D], v: [B, H, Dv] (any strides); g: fp32 [H]; states: fp32 [S, H, D, Dv]
    updated in place (any strides, e.g. one layer of a bigger pool); slots: [B] int, -1 = padding
    (distinct otherwise). Returns o [B, H, Dv] in q.dtype (written into `out` when given).
    """
    device = tc.check_device({"q": q, "k": k, "v": v, "g": g, "states": states, "slots": slots})
    tc.check_dtype(q, "q", tc.FLOAT_DTYPES)
    tc.check_same_dtype({"q": q, "k": k, "v": v})
    tc.check_shape(q, "q", [None, None, None])
    B, H, D = q.shape
    Dv = v.shape[-1]
    tc.check_shape(k, "k", [B, H, D])
    tc.check_shape(v, "v", [B, H, None])
    tc.check_shape(g, "g", [H])
    tc.check_dtype(g, "g", [torch.float32])
    tc.check_shape(states, "states", [None, H, D, Dv])
    tc.check_dtype(states, "states", [torch.float32])
    tc.check_writable(states, "states")
    tc.check_shape(slots, "slots", [B])
    tc.check_dtype(slots, "slots", tc.INDEX_DTYPES)
    o = tc.check_out(out, "out", (B, H, Dv), q.dtype, device)
    if B == 0:
        return o
    bk = tc.next_pow2(D, minimum=1)
    bv = tc.next_pow2(Dv, minimum=1) if tc.interpreting() else min(32, tc.next_pow2(Dv))
    tc.launch(_decode_kernel, (B, H, tc.cdiv(Dv, bv)),
              q, k, v, g, states, slots, o,
              *q.stride(), *k.stride(), *v.stride(), *o.stride(), *states.stride(), D, Dv,
              BK=bk, BV=bv, num_warps=4)
    return o
