"""Triton chunked Lightning attention over a packed variable-length batch (prefill).

Per head h with log decay g_h < 0 the recurrence S_t = exp(g_h) S_{t-1} + k_t^T v_t,
o_t = q_t S_t (current token included) is computed in chunks of C tokens, in two passes:
  1. `_chunk_states_kernel`, one program per (sequence, head, [BK x BV] state block), walks
     the chunks of its sequence in order: S_next = exp(g c) S + sum_j exp(g (c-1-j)) k_j^T v_j.
     It stores the state before every chunk into a scratch buffer (in the dtype the output
     pass multiplies it in), the fp32 state at requested snapshot boundaries, and the final
     fp32 state into its slot.
  2. `_chunk_output_kernel`, one program per (chunk, head, value block), all independent:
     o = (Q K^T * M) V + (Q * exp(g (i + 1))) S_before,  M[i, j] = exp(g (i - j)) for i >= j.
State recurrence and all accumulation are fp32; inputs may be fp32, fp16 or bf16 (bf16 inputs
multiply the state in bf16 in pass 2, like every bf16 tensor-core kernel). No host sync unless
snapshots are requested. Twin: kernels.lightning_ref.lightning_prefill_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc
from kernels.lightning_layout import chunk_layout, snapshot_plan


@triton.jit
def _chunk_states_kernel(
    k_ptr, v_ptr, g_ptr, cu_ptr, first_ptr, base_ptr, states_ptr, init_ptr, final_ptr,
    scratch_ptr, snaps_ptr, snap_of_ptr,
    stride_kt, stride_kh, stride_kd, stride_vt, stride_vh, stride_vd,
    stride_ss, stride_sh, stride_sk, stride_sv, stride_xn, stride_xh, stride_xk,
    stride_nn, stride_nh, stride_nk, stride_nv,
    D_K, D_V, N_VB,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
    PREC: tl.constexpr, HAS_SNAPS: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    offs_k = (tl.program_id(2) // N_VB) * BK + tl.arange(0, BK)
    offs_v = (tl.program_id(2) % N_VB) * BV + tl.arange(0, BV)
    offs_c = tl.arange(0, C)
    kv_mask = (offs_k[:, None] < D_K) & (offs_v[None, :] < D_V)
    start = tl.load(cu_ptr + seq).to(tl.int64)
    end = tl.load(cu_ptr + seq + 1).to(tl.int64)
    first = tl.load(first_ptr + seq).to(tl.int64)
    base = tl.load(base_ptr + seq).to(tl.int64)
    g = tl.load(g_ptr + h).to(tl.float32)
    state_off = h * stride_sh + offs_k[:, None] * stride_sk + offs_v[None, :] * stride_sv
    scratch_off = h * stride_xh + offs_k[:, None] * stride_xk + offs_v[None, :]
    snap_off = h * stride_nh + offs_k[:, None] * stride_nk + offs_v[None, :] * stride_nv
    init = tl.load(init_ptr + seq).to(tl.int64)
    state = tl.zeros((BK, BV), dtype=tl.float32)
    if init >= 0:
        state = tl.load(states_ptr + init * stride_ss + state_off, mask=kv_mask, other=0.0)
    n_chunks = tl.cdiv(end - start, C)
    # Loads stay unconditional inside the loop so the compiler can pipeline them.
    for m in range(0, n_chunks):
        if HAS_SNAPS:  # snapshot of the state after m chunks
            snap = tl.load(snap_of_ptr + base + m).to(tl.int64)
            if snap >= 0:
                tl.store(snaps_ptr + snap * stride_nn + snap_off, state, mask=kv_mask)
        tl.store(scratch_ptr + (first + m) * stride_xn + scratch_off,
                 state.to(scratch_ptr.dtype.element_ty), mask=kv_mask)
        rows = start + m * C + offs_c
        valid = rows < end
        k = tl.load(
            k_ptr + rows[:, None] * stride_kt + h * stride_kh + offs_k[None, :] * stride_kd,
            mask=valid[:, None] & (offs_k[None, :] < D_K), other=0.0,
        ).to(tl.float32)
        v = tl.load(
            v_ptr + rows[:, None] * stride_vt + h * stride_vh + offs_v[None, :] * stride_vd,
            mask=valid[:, None] & (offs_v[None, :] < D_V), other=0.0,
        ).to(tl.float32)
        length = tl.minimum(end - start - m * C, C).to(tl.float32)
        # Weight of token j in the state after this chunk: exp(g (length - 1 - j)).
        k_decay = tl.where(valid, tl.exp(g * (length - 1.0 - offs_c.to(tl.float32))), 0.0)
        kd = (k * k_decay[:, None]).to(DOT)
        update = tl.dot(tl.trans(kd), v.to(DOT), input_precision=PREC)
        state = tl.exp(g * length) * state + update
    if HAS_SNAPS:  # snapshot at the sequence's end
        snap = tl.load(snap_of_ptr + base + n_chunks).to(tl.int64)
        if snap >= 0:
            tl.store(snaps_ptr + snap * stride_nn + snap_off, state, mask=kv_mask)
    final = tl.load(final_ptr + seq).to(tl.int64)
    if final >= 0:
        tl.store(states_ptr + final * stride_ss + state_off, state, mask=kv_mask)


@triton.jit
def _chunk_output_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, g_ptr, cu_ptr, chunk_seq_ptr, first_ptr, scratch_ptr,
    stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
    stride_vt, stride_vh, stride_vd, stride_ot, stride_oh, stride_od,
    stride_xn, stride_xh, stride_xk,
    D_K, D_V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT: tl.constexpr,
    SDOT: tl.constexpr, PREC: tl.constexpr,
):
    chunk = tl.program_id(0)
    h = tl.program_id(1)
    seq = tl.load(chunk_seq_ptr + chunk)
    if seq < 0:  # grid is an upper bound on the number of chunks
        return
    m = chunk - tl.load(first_ptr + seq)
    start = tl.load(cu_ptr + seq).to(tl.int64)
    end = tl.load(cu_ptr + seq + 1).to(tl.int64)
    g = tl.load(g_ptr + h).to(tl.float32)
    offs_v = tl.program_id(2) * BV + tl.arange(0, BV)
    offs_k = tl.arange(0, BK)
    offs_c = tl.arange(0, C)
    rows = start + m * C + offs_c
    valid = rows < end
    k_mask = valid[:, None] & (offs_k[None, :] < D_K)
    v_mask = valid[:, None] & (offs_v[None, :] < D_V)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + offs_k[None, :] * stride_qd,
                mask=k_mask, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + rows[:, None] * stride_kt + h * stride_kh + offs_k[None, :] * stride_kd,
                mask=k_mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + rows[:, None] * stride_vt + h * stride_vh + offs_v[None, :] * stride_vd,
                mask=v_mask, other=0.0).to(tl.float32)
    state = tl.load(
        scratch_ptr + chunk.to(tl.int64) * stride_xn + h * stride_xh
        + offs_k[:, None] * stride_xk + offs_v[None, :],
        mask=(offs_k[:, None] < D_K) & (offs_v[None, :] < D_V), other=0.0,
    )
    scores = tl.dot(q.to(DOT), tl.trans(k.to(DOT)), input_precision=PREC)
    diff = (offs_c[:, None] - offs_c[None, :]).to(tl.float32)
    decay = tl.where(diff >= 0, tl.exp(g * tl.maximum(diff, 0.0)), 0.0)
    out = tl.dot((scores * decay).to(DOT), v.to(DOT), input_precision=PREC)
    q_decay = tl.exp(g * (offs_c.to(tl.float32) + 1.0))
    out = tl.dot((q * q_decay[:, None]).to(SDOT), state.to(SDOT), acc=out,
                 input_precision=PREC)
    tl.store(o_ptr + rows[:, None] * stride_ot + h * stride_oh + offs_v[None, :] * stride_od,
             out.to(o_ptr.dtype.element_ty), mask=v_mask)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, g: Tensor, cu_seqlens: Tensor,
                  states: Tensor, initial_slots: Tensor, final_slots: Tensor,
                  chunk_size: int) -> torch.device:
    device = tc.check_device({"q": q, "k": k, "v": v, "g": g, "cu_seqlens": cu_seqlens,
                              "states": states, "initial_slots": initial_slots,
                              "final_slots": final_slots})
    tc.check_dtype(q, "q", tc.FLOAT_DTYPES)
    tc.check_same_dtype({"q": q, "k": k, "v": v})
    tc.check_shape(q, "q", [None, None, None])
    T, H, D = q.shape
    tc.check_shape(k, "k", [T, H, D])
    tc.check_shape(v, "v", [T, H, None])
    tc.check_shape(g, "g", [H])
    tc.check_dtype(g, "g", [torch.float32])
    tc.check_shape(cu_seqlens, "cu_seqlens", [None])
    B = cu_seqlens.shape[0] - 1
    if B < 1:
        raise ValueError("cu_seqlens must hold at least two offsets")
    for name, t in (("cu_seqlens", cu_seqlens), ("initial_slots", initial_slots),
                    ("final_slots", final_slots)):
        tc.check_dtype(t, name, tc.INDEX_DTYPES)
    tc.check_shape(initial_slots, "initial_slots", [B])
    tc.check_shape(final_slots, "final_slots", [B])
    tc.check_shape(states, "states", [None, H, D, v.shape[2]])
    tc.check_dtype(states, "states", [torch.float32])
    tc.check_writable(states, "states")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    return device


def _check_snapshots(snapshot_ends: Tensor | None, snapshots: Tensor | None,
                     state_shape: tuple[int, ...], device: torch.device) -> None:
    if (snapshot_ends is None) != (snapshots is None):
        raise ValueError("snapshot_ends and snapshots must be given together")
    if snapshot_ends is None or snapshots is None:
        return
    tc.check_shape(snapshot_ends, "snapshot_ends", [None])
    tc.check_dtype(snapshot_ends, "snapshot_ends", tc.INDEX_DTYPES)
    tc.check_shape(snapshots, "snapshots", [snapshot_ends.shape[0], *state_shape])
    tc.check_dtype(snapshots, "snapshots", [torch.float32])
    tc.check_writable(snapshots, "snapshots")
    if snapshots.device != device or snapshot_ends.device != device:
        raise ValueError(f"snapshots and snapshot_ends must be on {device}")


def lightning_prefill(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, cu_seqlens: Tensor, states: Tensor,
    initial_slots: Tensor, final_slots: Tensor, chunk_size: int = 64,
    snapshot_ends: Tensor | None = None, snapshots: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Chunked Lightning attention; same contract as kernels.lightning_ref.lightning_prefill_ref.

    q, k: [T, H, D], v: [T, H, Dv] packed; g: fp32 [H]; cu_seqlens: [B + 1]; states: fp32
    [S, H, D, Dv] slot pool (any strides); initial_slots / final_slots: [B], -1 = zero state /
    no write (read happens before write, slots of different sequences must differ).
    snapshot_ends [N] / snapshots fp32 [N, H, D, Dv]: snapshot n = state after the tokens of its
    sequence before packed index p; p must be chunk-aligned within the sequence or its end.
    Returns o [T, H, Dv] in q.dtype (written into `out` when given).
    """
    device = _check_inputs(q, k, v, g, cu_seqlens, states, initial_slots, final_slots,
                           chunk_size)
    T, H, D = q.shape
    Dv = v.shape[2]
    _check_snapshots(snapshot_ends, snapshots, (H, D, Dv), device)
    o = tc.check_out(out, "out", (T, H, Dv), q.dtype, device)
    lay = chunk_layout(cu_seqlens, T, chunk_size)
    plan = None
    if snapshot_ends is not None and snapshots is not None and snapshot_ends.shape[0]:
        plan = snapshot_plan(snapshot_ends, lay, chunk_size)
    B = cu_seqlens.shape[0] - 1
    state_dot = tc.dot_dtype(q.dtype) if q.dtype == torch.bfloat16 else tl.float32
    scratch_dtype = torch.bfloat16 if state_dot == tl.bfloat16 else torch.float32
    scratch = torch.empty((lay.chunk_seq.shape[0], H, D, Dv), dtype=scratch_dtype, device=device)
    xs = scratch.stride()[:3]
    small = tc.interpreting()  # the interpreter runs fastest with whole-head blocks
    bk_s = tc.next_pow2(D) if small else min(64, tc.next_pow2(D))
    bv_s = tc.next_pow2(Dv) if small else min(64, tc.next_pow2(Dv))
    n_vb = tc.cdiv(Dv, bv_s)
    snaps = snapshots if plan is not None else scratch
    snap_of = plan.snap_of if plan is not None else lay.first
    common = {"C": chunk_size, "DOT": tc.dot_dtype(q.dtype), "PREC": tc.dot_precision(q.dtype)}
    tc.launch(_chunk_states_kernel, (B, H, tc.cdiv(D, bk_s) * n_vb),
              k, v, g, lay.cu, lay.first, lay.base, states, initial_slots, final_slots,
              scratch, snaps, snap_of, *k.stride(), *v.stride(), *states.stride(), *xs,
              *(snaps.stride() if plan is not None else (0, 0, 0, 0)), D, Dv, n_vb,
              BK=bk_s, BV=bv_s, HAS_SNAPS=plan is not None, num_warps=4, **common)
    bk = tc.next_pow2(D)
    bv_cap = 32 if q.dtype == torch.float32 else 64  # exact fp32 dots run on FMA units
    bv = tc.next_pow2(Dv) if small else min(bv_cap, tc.next_pow2(Dv))
    tc.launch(_chunk_output_kernel, (lay.chunk_seq.shape[0], H, tc.cdiv(Dv, bv)),
              q, k, v, o, g, lay.cu, lay.chunk_seq, lay.first, scratch,
              *q.stride(), *k.stride(), *v.stride(), *o.stride(), *xs, D, Dv,
              BK=bk, BV=bv, SDOT=state_dot, num_warps=4 if bk <= 64 else 8, **common)
    if plan is not None and snapshots is not None:
        for dup, src in plan.duplicates:
            snapshots[dup].copy_(snapshots[src])
    return o
