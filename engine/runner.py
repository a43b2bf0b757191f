"""The model runner: the only place that turns sequences into device batches.

A `SeqCache` names what a sequence holds in the pools (pages, one state slot, cached length);
its owner frees it with `release` on every exit path, abort included.

With tensor parallelism the leader's runner owns all allocation and drives its followers: each
device step is announced to them (`RankLink.send`) and then run by every rank on its own slice
(`rank_*` methods), in the same order, under one lock. Latent pages are whole on every rank;
state slots hold each rank's heads, and the leader keeps `full_states`, the whole state of a
slot, where transfers land (decode) and where finishing prompts are gathered (prefill).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.batch_build import build_batch, slot_mapping
from engine.cache.pools import LatentPool, StatePool
from engine.model.ling import CacheViews, LingModel
from engine.parallel.rank_link import RankLink
from engine.sequences import PrefillItem, SeqCache


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
        ranks: RankLink | None = None,
    ) -> None:
        """`ranks`: the leader's followers, which build the same runner on their slices."""
        self.model, self.cfg, self.group, self.ranks = model, model.cfg, model.group, ranks
        self.latents = LatentPool(model.cfg, num_pages, page_size, model.dtype, model.device)
        self.states = StatePool(model.cfg, num_slots, model.device, model.local_heads)
        self.full_states = self._full_state_storage(num_slots)
        self.cache = CacheViews(self.latents.storage, self.states.storage)
        self.lightning_chunk = lightning_chunk
        self._device_lock = threading.Lock()
        if ranks is not None:
            ranks.send("runner", (num_pages, page_size, num_slots, lightning_chunk))

    def _full_state_storage(self, num_slots: int) -> Tensor:
        """The states pool itself with one rank; a whole-heads mirror on a TP leader only."""
        if self.group.world == 1 or not self.group.is_leader:
            return self.states.storage
        c = self.cfg
        shape = (num_slots, len(c.linear_layers), c.num_attention_heads, c.head_dim, c.head_dim)
        return torch.zeros(shape, dtype=torch.float32, device=self.model.device)

    def _announce(self, op: str, payload: object) -> None:
        if self.ranks is not None:
            self.ranks.send(op, payload)

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
        """The slot's whole state (with TP: as last gathered by a prefill or sent by a peer)."""
        return self.full_states[seq.slot].clone()

    def load_prefix(self, seq: SeqCache, latents: Tensor, state: Tensor) -> None:
        """Resume point: `latents` [mla_layers, n, W] and the whole state after those n tokens."""
        n = latents.shape[1]
        self.ensure_capacity(seq, n)
        dev = self.model.device  # cached blocks may live on the host (L2); NCCL needs device
        latents = latents.to(device=dev, dtype=self.latents.storage.dtype)
        state = state.to(dev)
        with self._device_lock:
            self._announce("load_prefix", (seq, tuple(latents.shape)))
            self.rank_load_prefix(seq, latents, state)
        seq.length = n

    def rank_load_prefix(self, seq: SeqCache, latents: Tensor, state: Tensor | None) -> None:
        """Every rank: the leader's latents into the pages, its heads of `state` into the slot."""
        n = latents.shape[1]
        self.group.broadcast(latents)
        slots = slot_mapping(seq, 0, n, self.latents.page_size, self.model.device)
        pages, rows = slots // self.latents.page_size, slots % self.latents.page_size
        self.latents.storage[:, pages, rows] = latents
        self.group.scatter_heads(state, self.states.storage[seq.slot], dim=1)

    def publish(self, seqs: list[SeqCache]) -> None:
        """After a transfer into the leader's pages and `full_states`: give every rank the
        sequences' latents and its heads of their states (nothing to do with one rank)."""
        if self.group.world == 1 or not seqs:
            return
        with self._device_lock:
            self._announce("publish", seqs)  # pickled by the pipe now, not later
            self.rank_publish(seqs)

    def rank_publish(self, seqs: list[SeqCache]) -> None:
        for s in seqs:
            pages = torch.tensor(
                s.pages[: self.latents.pages_for(s.length)], device=self.model.device
            )
            block = self.latents.storage[:, pages]
            self.group.broadcast(block)
            self.latents.storage[:, pages] = block
            full = self.full_states[s.slot] if self.group.is_leader else None
            self.group.scatter_heads(full, self.states.storage[s.slot], dim=1)

    # Forward ----------------------------------------------------------------------------------
    def _run(
        self,
        items: list[PrefillItem],
        is_decode: bool,
        after_layer: Callable[[int], None] | None = None,
        gather: tuple[int, ...] = (),
    ) -> PrefillOutput:
        """One forward on every rank. `gather`: items whose whole final states the leader needs
        in `full_states` by the time `after_layer` sees each Lightning layer."""
        for it in items:
            self.ensure_capacity(it.seq, it.seq.length + len(it.tokens))
        with self._device_lock:
            self._announce("forward", (items, is_decode, gather))
            hidden, snap_keys, snaps = self.rank_forward(items, is_decode, gather, after_layer)
        for it in items:
            it.seq.length += len(it.tokens)
        snapshots = {key: snaps[n] for n, key in enumerate(snap_keys)} if snaps is not None else {}
        return PrefillOutput(hidden=hidden, logits=self.model.logits(hidden), snapshots=snapshots)

    def rank_forward(
        self,
        items: list[PrefillItem],
        is_decode: bool,
        gather: tuple[int, ...],
        after_layer: Callable[[int], None] | None = None,
    ) -> tuple[Tensor, list[tuple[int, int]], Tensor | None]:
        """Every rank: (hidden, snapshot keys, whole snapshots on the leader)."""
        ps, dev = self.latents.page_size, self.model.device
        batch, snap_keys = build_batch(items, is_decode, ps, self.lightning_chunk, dev)
        tokens = torch.tensor([t for it in items for t in it.tokens], device=self.model.device)
        snaps = None
        if snap_keys:
            c = self.cfg
            shape = (len(snap_keys), len(c.linear_layers), self.model.local_heads, c.head_dim,
                     c.head_dim)  # fmt: skip
            snaps = torch.empty(shape, dtype=torch.float32, device=self.model.device)
        slots = [items[b].seq.slot for b in gather]
        hook = functools.partial(self._after_layer, slots, after_layer)
        hidden = self.model.forward_cached(tokens, batch, self.cache, snaps, hook)
        if snaps is not None:
            snaps = self.group.gather_heads(snaps, dim=2)
        return hidden, snap_keys, snaps

    def _after_layer(
        self, slots: list[int], then: Callable[[int], None] | None, layer: int
    ) -> None:
        if slots and self.group.world > 1 and not self.cfg.is_mla_layer(layer):
            j = self.model.linear_index[layer]
            index = torch.tensor(slots, device=self.model.device)
            whole = self.group.gather_heads(self.states.storage[index, j], dim=1)
            if whole is not None:
                self.full_states[index, j] = whole
        if then is not None:
            then(layer)

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
            hook, gather = None, ()
            if on_layer_done is not None and finishing:
                hook = functools.partial(_call_layer_hook, on_layer_done, finishing)
                gather = tuple(j for j, b in enumerate(active) if b in finishing)
            out = self._run(chunk, is_decode=False, after_layer=hook, gather=gather)
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
