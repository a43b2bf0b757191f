"""What one forward call over a packed batch needs to know (built by the model, read by layers).

Tokens of all sequences are packed along dim 0. Sequence b owns tokens cu_seqlens[b]:cu_seqlens[b+1]
at absolute positions context_lens[b] - n_b ... context_lens[b] - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ForwardBatch:
    positions: Tensor  # [T] absolute positions
    cu_seqlens: Tensor  # [B + 1] new tokens per sequence
    context_lens: Tensor  # [B] tokens cached after this call (prefix + new)
    block_tables: Tensor  # [B, max_blocks] latent pages of each sequence
    slot_mapping: Tensor  # [T] page * page_size + row where each new token's latent goes
    initial_slots: Tensor  # [B] state slot holding the state before this call, -1 = zero
    final_slots: Tensor  # [B] state slot that receives the state after this call
    is_decode: bool  # one token per sequence, absorbed MLA
    snapshot_ends: Tensor | None = None  # [N] packed token indices for state snapshots
    chunk_size: int = 64

    @property
    def num_seqs(self) -> int:
        return int(self.cu_seqlens.numel() - 1)
