"""Plain-PyTorch twins of the MLA attention kernels (also the CPU path).

Decode is absorbed: per head, logits over the cached latent [c_kv | k_pe] of each token,
    logit_j = scale * (q_latent . c_kv_j + q_pe . k_pe_j),
    o_latent = sum_j softmax(logit)_j c_kv_j,
where q_latent = q_nope W_UK. Prefill/extend is expanded: per-head k = [k_nope | k_pe], v.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gather_context(kv_pages: Tensor, block_table: Tensor, length: int) -> Tensor:
    """The first `length` cached tokens of one sequence: [length, W]."""
    page_size = kv_pages.shape[1]
    n_pages = (length + page_size - 1) // page_size
    pages = block_table[:n_pages].long()
    return kv_pages[pages].reshape(n_pages * page_size, -1)[:length]


def mla_decode_ref(
    q_latent: Tensor,
    q_pe: Tensor,
    kv_pages: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """Absorbed MLA decode over a paged latent pool. Returns o_latent [B, H, R] in q's dtype.

    q_latent: [B, H, R]; q_pe: [B, H, P]; kv_pages: [num_pages, page_size, R + P];
    block_tables: [B, max_blocks]; context_lens: [B] (0 = padding row -> zeros).
    """
    B, H, R = q_latent.shape
    out = torch.zeros(B, H, R, dtype=torch.float32, device=q_latent.device)
    for b, length in enumerate(context_lens.tolist()):
        if length <= 0:
            continue
        ctx = gather_context(kv_pages, block_tables[b], length).float()
        c_kv, k_pe = ctx[:, :R], ctx[:, R:]
        logits = q_latent[b].float() @ c_kv.T + q_pe[b].float() @ k_pe.T  # [H, length]
        probs = torch.softmax(logits * scale, dim=-1)
        out[b] = probs @ c_kv
    return out.to(q_latent.dtype)


def mla_extend_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_kv: Tensor,
    scale: float,
) -> Tensor:
    """Causal expanded attention of new tokens over prefix + new tokens, per packed sequence.

    Query i of sequence b sits at absolute position kv_len_b - q_len_b + i. Returns [Tq, H, Dv].
    """
    out = torch.empty(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float32, device=q.device)
    bq, bkv = cu_seqlens_q.tolist(), cu_seqlens_kv.tolist()
    for b in range(len(bq) - 1):
        qs, ks = slice(bq[b], bq[b + 1]), slice(bkv[b], bkv[b + 1])
        q_len, kv_len = bq[b + 1] - bq[b], bkv[b + 1] - bkv[b]
        qh = q[qs].float().transpose(0, 1)  # [H, q_len, Dqk]
        kh, vh = k[ks].float().transpose(0, 1), v[ks].float().transpose(0, 1)
        logits = torch.matmul(qh, kh.transpose(1, 2)) * scale  # [H, q_len, kv_len]
        q_pos = torch.arange(q_len, device=q.device)[:, None] + (kv_len - q_len)
        allowed = torch.arange(kv_len, device=q.device)[None, :] <= q_pos
        logits = logits.masked_fill(~allowed, float("-inf"))
        out[qs] = torch.matmul(torch.softmax(logits, dim=-1), vh).transpose(0, 1)
    return out.to(q.dtype)
