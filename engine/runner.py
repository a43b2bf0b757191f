"""The model runner: the only place that turns sequences into device batches.

A `SeqCache` names what a sequence holds in the pools (pages, one state slot, cached length);
its owner frees it with `release` on every exit path, abort included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.cache.pools import LatentPool, StatePool
from engine.model.batch import ForwardBatch
from engine.model.ling import CacheViews, LingModel


@dataclass
class SeqCache:
    pages: list[int] = field(default_factory=list)
    slot: int = -1
    length: int = 0  # tokens whose latents and state are in the pools


@dataclass(frozen=True)
class PrefillItem:
    seq: SeqCache
    tokens: list[int]  # new tokens, at positions seq.length ...
    snapshot_at: tuple[int, ...] = ()  # absolute token counts whose state to snapshot


@dataclass(frozen=True)
class PrefillOutput:
    hidden: Tensor  # [B, hidden] final-normed, last new token of each item
    logits: Tensor  # [B, V] fp32
    snapshots: dict[tuple[int, int], Tensor]  # (item index, token count) -> [lin, H, D, D]


class ModelRunner:
    def __init__(
        self,
        model: LingModel,
        num_pages: int,
        page_size: int,
        num_slots: int,
        lightning_chunk: int = 64,
    ) -> None:
        self.model, self.cfg = model, model.cfg
        self.latents = LatentPool(model.cfg, num_pages, page_size, model.dtype, model.device)
        self.states = StatePool(model.cfg, num_slots, model.device)
        self.cache = CacheViews(self.latents.storage, self.states.storage)
        self.lightning_chunk = lightning_chunk

    # Ownership --------------------------------------------------------------------------------
    def new_sequence(self, capacity_tokens: int) -> SeqCache:
        """A slot plus pages for `capacity_tokens`; all or nothing."""
        slot = self.states.allocate()
        try:
            pages = self.latents.allocate(self.latents.pages_for(capacity_tokens))
        except Exception:
            self.states.free(slot)
            raise
        return SeqCache(pages=pages, slot=slot)

    def ensure_capacity(self, seq: SeqCache, num_tokens: int) -> None:
        missing = self.latents.pages_for(num_tokens) - len(seq.pages)
        if missing > 0:
            seq.pages.extend(self.latents.allocate(missing))

    def release(self, seq: SeqCache) -> None:
        if seq.pages:
            self.latents.free(seq.pages)
            seq.pages = []
        if seq.slot >= 0:
            self.states.free(seq.slot)
            seq.slot = -1
        seq.length = 0

    def check_integrity(self) -> None:
        self.latents.check_integrity()
        self.states.check_integrity()

    def pool_report(self) -> dict[str, object]:
        """Pool sizes and the integrity verdict, as a worker's Load reports them."""
        try:
            self.check_integrity()
            ok, err = True, ""
        except AssertionError as exc:
            ok, err = False, str(exc)
        return {
            "free_pages": self.latents.num_free,
            "total_pages": self.latents.pages.total,
            "free_slots": self.states.num_free,
            "total_slots": self.states.slots.total,
            "integrity_ok": ok,
            "integrity_error": err,
        }

    # Cache contents ---------------------------------------------------------------------------
    def read_latents(self, seq: SeqCache) -> Tensor:
        """[mla_layers, length, W] latents of the cached tokens."""
        ps = self.latents.page_size
        pages = torch.tensor(seq.pages, device=self.model.device)
        flat = self.latents.storage[:, pages].reshape(
            len(self.cfg.mla_layers), -1, self.cfg.latent_dim
        )
        return flat[:, : seq.length].clone() if len(seq.pages) * ps >= seq.length else flat

    def layer_latents(self, seq: SeqCache, mla_layer: int, num_tokens: int) -> Tensor:
        """A copy of one MLA layer's latents of the first `num_tokens` tokens: [num_tokens, W]
        (during a forward, seq.length still counts only the tokens before it)."""
        pages = torch.tensor(seq.pages, device=self.model.device)
        flat = self.latents.storage[mla_layer, pages].reshape(-1, self.cfg.latent_dim)
        return flat[:num_tokens].clone()

    def read_state(self, seq: SeqCache) -> Tensor:
        return self.states.storage[seq.slot].clone()

    def load_prefix(self, seq: SeqCache, latents: Tensor, state: Tensor) -> None:
        """Resume point: `latents` [mla_layers, n, W] and the state after those n tokens."""
        n = latents.shape[1]
        self.ensure_capacity(seq, n)
        slots = self._slot_mapping(seq, 0, n)
        pages, rows = slots // self.latents.page_size, slots % self.latents.page_size
        self.latents.storage[:, pages, rows] = latents.to(self.latents.storage.dtype)
        self.states.storage[seq.slot] = state
        seq.length = n

    # Forward ----------------------------------------------------------------------------------
    def _slot_mapping(self, seq: SeqCache, start: int, end: int) -> Tensor:
        pos = torch.arange(start, end)
        ps = self.latents.page_size
        pages = torch.tensor(seq.pages, dtype=torch.long)[pos // ps]
        return (pages * ps + pos % ps).to(self.model.device)

    def _block_tables(self, seqs: list[SeqCache]) -> Tensor:
        width = max(len(s.pages) for s in seqs)
        table = torch.full((len(seqs), width), -1, dtype=torch.int32)
        for b, s in enumerate(seqs):
            table[b, : len(s.pages)] = torch.tensor(s.pages, dtype=torch.int32)
        return table.to(self.model.device)

    def _batch(self, items: list[PrefillItem], is_decode: bool) -> tuple[ForwardBatch, list[int]]:
        dev = self.model.device
        seqs = [it.seq for it in items]
        for it in items:
            self.ensure_capacity(it.seq, it.seq.length + len(it.tokens))
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
            block_tables=self._block_tables(seqs),
            slot_mapping=torch.cat(
                [
                    self._slot_mapping(s, s.length, s.length + n)
                    for s, n in zip(seqs, lens, strict=True)
                ]
            ),
            initial_slots=torch.tensor([s.slot if s.length > 0 else -1 for s in seqs], device=dev),
            final_slots=torch.tensor([s.slot for s in seqs], device=dev),
            is_decode=is_decode,
            snapshot_ends=torch.tensor(snap_ends, device=dev) if snap_ends else None,
            chunk_size=self.lightning_chunk,
        )
        return batch, snap_keys

    def _run(
        self,
        items: list[PrefillItem],
        is_decode: bool,
        after_layer: Callable[[int], None] | None = None,
    ) -> PrefillOutput:
        batch, snap_keys = self._batch(items, is_decode)
        tokens = torch.tensor([t for it in items for t in it.tokens], device=self.model.device)
        snaps = None
        if snap_keys:
            c = self.cfg
            shape = (
                len(snap_keys),
                len(c.linear_layers),
                c.num_attention_heads,
                c.head_dim,
                c.head_dim,
            )
            snaps = torch.empty(shape, dtype=torch.float32, device=self.model.device)
        hidden = self.model.forward_cached(tokens, batch, self.cache, snaps, after_layer)
        for it in items:
            it.seq.length += len(it.tokens)
        snapshots = {key: snaps[n] for n, key in enumerate(snap_keys)} if snaps is not None else {}
        return PrefillOutput(hidden=hidden, logits=self.model.logits(hidden), snapshots=snapshots)

    def prefill(self, items: list[PrefillItem]) -> PrefillOutput:
        """One prefill call over every item's new tokens (any lengths >= 1)."""
        if any(not it.tokens for it in items):
            raise ValueError("every prefill item needs at least one new token")
        return self._run(items, is_decode=False)

    def prefill_chunked(
        self,
        items: list[PrefillItem],
        chunk_tokens: int,
        on_layer_done: Callable[[int, list[int]], None] | None = None,
    ) -> PrefillOutput:
        """Prefill in calls of at most `chunk_tokens` new tokens per sequence; returns each
        item's output from the call that processed its last token.

        `on_layer_done(layer, items)` runs in the call that completes those items, as soon as
        `layer` has written their final latents / state (for layer-wise streaming)."""
        results: dict[int, tuple[Tensor, Tensor]] = {}
        snapshots: dict[tuple[int, int], Tensor] = {}
        offsets = [0] * len(items)
        while len(results) < len(items):
            active = [b for b in range(len(items)) if b not in results]
            chunk = [
                PrefillItem(
                    items[b].seq,
                    items[b].tokens[offsets[b] : offsets[b] + chunk_tokens],
                    items[b].snapshot_at,
                )
                for b in active
            ]
            finishing = [
                b
                for b, c in zip(active, chunk, strict=True)
                if offsets[b] + len(c.tokens) >= len(items[b].tokens)
            ]
            hook = None
            if on_layer_done is not None and finishing:
                hook = functools.partial(_call_layer_hook, on_layer_done, finishing)
            out = self._run(chunk, is_decode=False, after_layer=hook)
            for j, b in enumerate(active):
                offsets[b] += len(chunk[j].tokens)
                if offsets[b] >= len(items[b].tokens):
                    results[b] = (out.hidden[j], out.logits[j])
            snapshots |= {(active[j], count): s for (j, count), s in out.snapshots.items()}
        hidden = torch.stack([results[b][0] for b in range(len(items))])
        logits = torch.stack([results[b][1] for b in range(len(items))])
        return PrefillOutput(hidden=hidden, logits=logits, snapshots=snapshots)

    def decode(self, seqs: list[SeqCache], tokens: list[int]) -> Tensor:
        """One decode step: token b is appended to sequence b. Returns logits [B, V] fp32."""
        items = [PrefillItem(s, [t]) for s, t in zip(seqs, tokens, strict=True)]
        return self._run(items, is_decode=True).logits


def _call_layer_hook(hook: Callable[[int, list[int]], None], items: list[int], layer: int) -> None:
    hook(layer, items)
