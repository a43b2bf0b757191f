"""Token grouping for the fused MoE: (token, k) pairs sorted into per-expert blocks of BM rows.

Pair p = t * top_k + k routes token t to expert e = topk_ids[t, k]. Every expert's pairs are
laid out in one run padded with -1 to a multiple of BM, runs in expert order, so each block of
BM entries belongs to one expert (block_expert; -1 for blocks past the last run). Three small
kernels, no host sync (sizes are upper bounds): count pairs per expert (atomics), turn counts
into run starts and block experts (one program), scatter each pair to its run (atomics).
Pairs of one expert are in arbitrary order inside its run; that does not change any result,
because every row of the expert GEMMs is computed on its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import triton_common as tc

_BLOCK = 1024


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    p_in = offs < N
    expert = tl.load(ids_ptr + offs, mask=p_in, other=0)
    tl.atomic_add(counts_ptr + expert, 1, mask=p_in)


@triton.jit
def _runs_kernel(counts_ptr, cursor_ptr, block_expert_ptr, pairs_ptr, E, n_blocks,
                 BM: tl.constexpr, BE: tl.constexpr, BB: tl.constexpr, BP: tl.constexpr):
    offs_e = tl.arange(0, BE)
    e_in = offs_e < E
    counts = tl.load(counts_ptr + offs_e, mask=e_in, other=0)
    padded = (counts + BM - 1) // BM * BM
    run_end = tl.cumsum(padded, 0)
    tl.store(cursor_ptr + offs_e, run_end - padded, mask=e_in)
    for b0 in range(0, n_blocks, BB):
        blocks = b0 + tl.arange(0, BB)
        # The expert whose run holds a block start is the number of runs ending at or before it.
        ended = (run_end[None, :] <= (blocks * BM)[:, None]) & e_in[None, :]
        expert = tl.sum(ended.to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blocks, tl.where(expert < E, expert, -1),
                 mask=blocks < n_blocks)
    for p0 in range(0, n_blocks * BM, BP):
        offs = p0 + tl.arange(0, BP)
        tl.store(pairs_ptr + offs, tl.full((BP,), -1, tl.int32), mask=offs < n_blocks * BM)


@triton.jit
def _scatter_kernel(ids_ptr, cursor_ptr, pairs_ptr, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    p_in = offs < N
    expert = tl.load(ids_ptr + offs, mask=p_in, other=0)
    slot = tl.atomic_add(cursor_ptr + expert, 1, mask=p_in)
    tl.store(pairs_ptr + slot, offs.to(tl.int32), mask=p_in)


def expert_blocks(topk_ids: Tensor, num_experts: int, block_m: int) -> tuple[Tensor, Tensor]:
    """(pairs int32 [n_blocks * BM], block_expert int32 [n_blocks]) for topk_ids [T, top_k]
    with values in [0, num_experts); n_blocks is an upper bound."""
    flat = topk_ids.reshape(-1)
    n_pairs = flat.shape[0]
    device = flat.device
    n_blocks = tc.cdiv(n_pairs + min(num_experts, n_pairs) * (block_m - 1), block_m)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=device)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=device)
    pairs = torch.empty(n_blocks * block_m, dtype=torch.int32, device=device)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=device)
    grid = (tc.cdiv(n_pairs, _BLOCK),)
    tc.launch(_count_kernel, grid, flat, counts, n_pairs, BLOCK=_BLOCK, num_warps=4)
    tc.launch(_runs_kernel, (1,), counts, cursor, block_expert, pairs, num_experts, n_blocks,
              BM=block_m, BE=tc.next_pow2(num_experts, minimum=2), BB=32, BP=_BLOCK,
              num_warps=4)
    tc.launch(_scatter_kernel, grid, flat, cursor, pairs, n_pairs, BLOCK=_BLOCK, num_warps=4)
    return pairs, block_expert
