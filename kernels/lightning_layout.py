"""Chunk bookkeeping for the Triton Lightning prefill (plain torch, runs on the kernel's device).

For a packed batch with cu_seqlens and chunk C, sequence b has n_b = ceil(len_b / C) chunks.
Chunks of all sequences are numbered globally (b's first chunk is first[b]); the state after
m chunks of b (m = 0 .. n_b) has entry number base[b] + m = first[b] + b + m. Grids are sized
by the upper bound ceil(T / C) + B on the number of chunks, so nothing waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels import triton_common as tc


@dataclass(frozen=True)
class ChunkLayout:
    cu: Tensor  # int64 [B + 1]
    first: Tensor  # int64 [B]: global index of each sequence's first chunk
    base: Tensor  # int64 [B]: entry of each sequence's initial state
    chunk_seq: Tensor  # int64 [upper bound]: sequence of each global chunk, -1 past the end
    n_entries: int  # upper bound on the number of state entries


@dataclass(frozen=True)
class SnapshotPlan:
    snap_of: Tensor  # int32 [n_entries]: snapshot index taken at each state entry, or -1
    duplicates: list[tuple[int, int]]  # (snapshot, earlier snapshot of the same entry)


def chunk_layout(cu_seqlens: Tensor, total_tokens: int, chunk: int) -> ChunkLayout:
    cu = cu_seqlens.to(torch.int64)
    B = cu.shape[0] - 1
    n_chunks = (cu[1:] - cu[:-1] + chunk - 1) // chunk
    ends = torch.cumsum(n_chunks, 0)
    first = ends - n_chunks
    upper = tc.cdiv(total_tokens, chunk) + B  # >= sum(ceil(len_b / C))
    seq = torch.searchsorted(ends, torch.arange(upper, device=cu.device), right=True)
    chunk_seq = torch.where(seq < B, seq, -1)
    base = first + torch.arange(B, device=cu.device)
    return ChunkLayout(cu, first, base, chunk_seq, upper + B)


def snapshot_plan(snapshot_ends: Tensor, lay: ChunkLayout, chunk: int) -> SnapshotPlan:
    """Where each snapshot is taken. Syncs with the host once, to reject positions that are
    neither chunk-aligned within their sequence nor its end, and to find duplicates."""
    p = snapshot_ends.to(torch.int64)
    cu = lay.cu
    B = cu.shape[0] - 1
    seq = torch.searchsorted(cu, p, side="left") - 1  # largest b with cu[b] < p
    in_range = (seq >= 0) & (seq < B)
    seq = seq.clamp(0, B - 1)
    local = p - cu[seq]
    aligned = (local % chunk == 0) | (p == cu[seq + 1])
    if not bool((in_range & aligned).all()):
        raise ValueError(
            "each snapshot end must lie in (cu_seqlens[b], cu_seqlens[b+1]] and be a multiple "
            f"of chunk_size={chunk} tokens into its sequence, or its sequence's end"
        )
    entries = (lay.base[seq] + (local + chunk - 1) // chunk).tolist()
    taken: dict[int, int] = {}
    duplicates = []
    for n, entry in enumerate(entries):
        if entry in taken:
            duplicates.append((n, taken[entry]))
        else:
            taken[entry] = n
    snap_of = torch.full((lay.n_entries,), -1, dtype=torch.int32)
    snap_of[list(taken)] = torch.tensor(list(taken.values()), dtype=torch.int32)
    return SnapshotPlan(snap_of.to(cu.device), duplicates)
