"""Plain-PyTorch twins of the Lightning linear-attention kernels (also the CPU path).

Recurrence per head h with constant log decay g_h < 0 (S is [D_k, D_v], S_0 = 0 unless given):
    S_t = exp(g_h) * S_{t-1} + k_t^T v_t,    o_t = q_t S_t   (the current token is included)
The chunked form with chunk C splits each sequence into chunks; within a chunk of length c:
    o = (Q K^T * M) V + (Q * exp(g (i + 1))) S_prev,   M[i, j] = exp(g (i - j)) for i >= j, else 0
    S_next = exp(g c) S_prev + sum_j exp(g (c - 1 - j)) k_j^T v_j
All state math is fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _chunk_forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk for all heads. q, k, v: [c, H, D] fp32; g: [H]; state: [H, D, D] fp32."""
    c = q.shape[0]
    idx = torch.arange(c, device=q.device, dtype=torch.float32)
    diff = idx[:, None] - idx[None, :]
    causal = diff >= 0
    decay = torch.exp(g[:, None, None] * diff.clamp(min=0)[None]) * causal[None]  # [H, c, c]
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, c, D]
    scores = torch.matmul(qh, kh.transpose(1, 2)) * decay
    intra = torch.matmul(scores, vh)
    q_decay = torch.exp(g[:, None] * (idx[None] + 1))[..., None]  # [H, c, 1]
    inter = torch.matmul(qh * q_decay, state)
    k_decay = torch.exp(g[:, None] * (c - 1 - idx[None]))[..., None]  # [H, c, 1]
    new_state = torch.exp(g * c)[:, None, None] * state + torch.matmul(
        (kh * k_decay).transpose(1, 2), vh
    )
    return (intra + inter).transpose(0, 1), new_state


def _initial_state(states: Tensor, slot: int, shape: tuple[int, ...]) -> Tensor:
    if slot < 0:
        return torch.zeros(shape, dtype=torch.float32, device=states.device)
    return states[slot].to(torch.float32).clone()


def _snapshot_map(snapshot_ends: Tensor | None, start: int, end: int) -> dict[int, list[int]]:
    """Local token counts (within [start, end]) -> indices of the snapshots taken there."""
    wanted: dict[int, list[int]] = {}
    if snapshot_ends is None:
        return wanted
    for n, p in enumerate(snapshot_ends.tolist()):
        if start < p <= end:
            wanted.setdefault(p - start, []).append(n)
    return wanted


def lightning_prefill_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    cu_seqlens: Tensor,
    states: Tensor,
    initial_slots: Tensor,
    final_slots: Tensor,
    chunk_size: int = 64,
    snapshot_ends: Tensor | None = None,
    snapshots: Tensor | None = None,
) -> Tensor:
    """Chunked Lightning attention over a packed variable-length batch (see module docstring).

    q, k, v: [T, H, D]; g: [H] fp32; cu_seqlens: [B + 1]; states: fp32 [S, H, D, D] slot pool;
    initial_slots / final_slots: [B] (-1 = zero state / do not write); snapshot_ends: [N] packed
    token indices whose prefix state goes to snapshots[n]. Returns o [T, H, D] in q.dtype.
    """
    if (snapshot_ends is None) != (snapshots is None):
        raise ValueError("snapshot_ends and snapshots must be given together")
    H, D = q.shape[1], q.shape[2]
    gf = g.to(torch.float32)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for b in range(len(bounds) - 1):
        start, end = bounds[b], bounds[b + 1]
        state = _initial_state(states, int(initial_slots[b]), (H, D, D))
        wanted = _snapshot_map(snapshot_ends, start, end)
        # Chunks are cut at snapshot points too so the state exists exactly there.
        cuts = sorted({*range(chunk_size, end - start, chunk_size), *wanted, end - start})
        pos = 0
        for cut in cuts:
            sl = slice(start + pos, start + cut)
            o, state = _chunk_forward(q[sl].float(), k[sl].float(), v[sl].float(), gf, state)
            out[sl] = o
            for n in wanted.get(cut, []):
                snapshots[n].copy_(state)  # type: ignore[index]
            pos = cut
        slot = int(final_slots[b])
        if slot >= 0:
            states[slot].copy_(state)
    return out.to(q.dtype)


def lightning_decode_ref(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, states: Tensor, slots: Tensor
) -> Tensor:
    """One recurrence step per sequence, state slots updated in place; slot -1 = padding row."""
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    slot_list = slots.tolist()
    live = [i for i, s in enumerate(slot_list) if s >= 0]
    if not live:
        return out.to(q.dtype)
    rows = torch.tensor(live, device=q.device)
    idx = torch.tensor([slot_list[i] for i in live], device=states.device)
    state = states[idx].to(torch.float32)  # [b, H, D, D]
    kf, vf, qf = k[rows].float(), v[rows].float(), q[rows].float()
    state = torch.exp(g.float())[None, :, None, None] * state + kf[..., :, None] * vf[..., None, :]
    out[rows] = torch.matmul(qf[..., None, :], state).squeeze(-2)
    states[idx] = state.to(states.dtype)
    return out.to(q.dtype)


def lightning_recurrent_ref(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence for one sequence (the textbook form, for tests and the full
    forward). q, k, v: [T, H, D]. Returns (o [T, H, D] fp32, final state [H, D, D] fp32)."""
    T, H, D = q.shape
    s = (
        torch.zeros(H, D, D, dtype=torch.float32, device=q.device)
        if state is None
        else state.float().clone()
    )
    decay = torch.exp(g.float())[:, None, None]
    outs = []
    for t in range(T):
        s = decay * s + k[t].float()[:, :, None] * v[t].float()[:, None, :]
        outs.append(torch.einsum("hd,hde->he", q[t].float(), s))
    return torch.stack(outs), s
