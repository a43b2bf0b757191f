"""Packed forward batches from sequences: positions, page slots, block tables, state slots."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.model.batch import ForwardBatch
from engine.sequences import PrefillItem, SeqCache


def slot_mapping(seq: SeqCache, start: int, end: int, ps: int, device: torch.device) -> Tensor:
    """Where the latents of positions start..end-1 go: page * page_size + row."""
    pos = torch.arange(start, end)
    pages = torch.tensor(seq.pages, dtype=torch.long)[pos // ps]
    return (pages * ps + pos % ps).to(device)


def block_tables(seqs: list[SeqCache], device: torch.device) -> Tensor:
    width = max(len(s.pages) for s in seqs)
    table = torch.full((len(seqs), width), -1, dtype=torch.int32)
    for b, s in enumerate(seqs):
        table[b, : len(s.pages)] = torch.tensor(s.pages, dtype=torch.int32)
    return table.to(device)


def build_batch(
    items: list[PrefillItem], is_decode: bool, ps: int, chunk: int, dev: torch.device
) -> tuple[ForwardBatch, list[tuple[int, int]]]:
    """The packed batch over every item's new tokens (their pages already allocated), and the
    (item, token count) key of each state snapshot it takes."""
    seqs = [it.seq for it in items]
    lens = [len(it.tokens) for it in items]
    cu = torch.zeros(len(items) + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(lens).cumsum(0)
    snap_ends, snap_keys = [], []
    for b, it in enumerate(items):
        for count in it.snapshot_at:
            if it.seq.length < count <= it.seq.length + lens[b]:
                snap_ends.append(int(cu[b]) + count - it.seq.length)
                snap_keys.append((b, count))
    batch = ForwardBatch(
        positions=torch.cat(
            [torch.arange(s.length, s.length + n) for s, n in zip(seqs, lens, strict=True)]
        ).to(dev),
        cu_seqlens=cu.to(dev),
        context_lens=torch.tensor(
            [s.length + n for s, n in zip(seqs, lens, strict=True)],
            dtype=torch.int32,
            device=dev,
        ),
        block_tables=block_tables(seqs, dev),
        slot_mapping=torch.cat(
            [
                slot_mapping(s, s.length, s.length + n, ps, dev)
                for s, n in zip(seqs, lens, strict=True)
            ]
        ),
        initial_slots=torch.tensor([s.slot if s.length > 0 else -1 for s in seqs], device=dev),
        final_slots=torch.tensor([s.slot for s in seqs], device=dev),
        is_decode=is_decode,
        snapshot_ends=torch.tensor(snap_ends, device=dev) if snap_ends else None,
        chunk_size=chunk,
    )
    return batch, snap_keys
