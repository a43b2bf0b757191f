"""The worker-side store of cached prefix blocks.

An entry, keyed by its chained block hash (engine.cache.block_hash), holds the block's MLA
latents and optionally the Lightning state snapshot at the block's end. A prefix resumes only
where a snapshot exists, so `acquire` returns the longest chain of present blocks that ends
with a snapshot, and pins it until `release`.

Tiers: L1 device memory (on the CPU build just a byte budget), L2 host memory, an optional
shared L3 `BlockTier` (Redis). Local tiers are LRU with reference counts; eviction demotes
L1 -> L2 -> L3 (when configured) -> gone, reporting each change as a `BlockEvent` (for the index).

Invariants (`check_integrity`): each entry lives in exactly one local tier whose byte count
includes it; a tier never exceeds its budget; an entry's ref count equals the number of live
handles holding it, and a pinned entry is never evicted. Chains are touched tail-first, so the
head of a chain is the most recent and eviction takes chains from the tail (a chain without
its head is useless).

Thread-safe; `on_event` is called under the store's lock and must be quick (append to a batch).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from engine.cache.prefix_codec import BlockCodecError, BlockData, decode_block, encode_block
from engine.cache.prefix_lru import BlockEntry, TierLru
from engine.cache.prefix_tier import BlockTier
from engine.cache.prefix_types import L1, L2, L3, LOCAL_TIERS, BlockEvent


@dataclass(frozen=True)
class PrefixStoreConfig:
    block_size: int
    l1_bytes: int
    l2_bytes: int
    device: str = "cpu"  # where L1 lives and where acquired tensors are returned
    l3_write_through: bool = False  # put new blocks in L3 at insert, not only on eviction

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")


@dataclass(frozen=True)
class PrefixHandle:
    """A pinned cached prefix: resume prefill after `num_tokens` tokens. The tensors are
    read-only and stay valid until `PrefixStore.release(handle)`."""

    handle_id: int
    block_hashes: tuple[str, ...]
    latents: torch.Tensor  # [mla_layers, num_tokens, W]
    state: torch.Tensor  # [linear_layers, H, D, D] fp32 after the last block

    @property
    def num_tokens(self) -> int:
        return int(self.latents.shape[1])


@dataclass
class PrefixStoreStats:
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    hit_blocks: int = 0
    inserted_blocks: int = 0
    l3_hits: int = 0
    l3_misses: int = 0
    l3_corrupt: int = 0
    l3_puts: int = 0
    l3_put_failures: int = 0
    dropped: int = 0  # blocks that left the store for good (no L3, or the L3 write failed)
    evictions: dict[str, int] = field(default_factory=lambda: {L1: 0, L2: 0})


class PrefixStore:
    def __init__(
        self,
        cfg: PrefixStoreConfig,
        l3: BlockTier | None = None,
        on_event: Callable[[BlockEvent], None] | None = None,
    ) -> None:
        self.cfg, self.l3 = cfg, l3
        self._on_event = on_event or (lambda _event: None)
        self._device = torch.device(cfg.device)
        self._tiers = {
            L1: TierLru(L1, cfg.l1_bytes, self._device),
            L2: TierLru(L2, cfg.l2_bytes, torch.device("cpu")),
        }
        self._entries: dict[str, BlockEntry] = {}
        self._handles: dict[int, tuple[str, ...]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stats = PrefixStoreStats()

    def insert(
        self,
        hashes: Sequence[str],
        latents: torch.Tensor,
        snapshots: Mapping[int, torch.Tensor],
    ) -> int:
        """Store what a prefill produced: `hashes` are the prompt's full-block hashes,
        `latents` [mla_layers, >= len(hashes) * block_size, W] cover the prompt from token 0,
        `snapshots[i]` is the state after block i. Only blocks up to the last snapshot are
        kept (later ones could not be resumed from). Returns the number of new blocks."""
        bs = self.cfg.block_size
        if latents.dim() != 3 or latents.shape[1] < len(hashes) * bs:
            raise ValueError(
                f"latents {list(latents.shape)} do not cover {len(hashes)} blocks of {bs}"
            )
        if any(not 0 <= i < len(hashes) for i in snapshots):
            raise ValueError(f"snapshot indices {sorted(snapshots)} outside 0..{len(hashes) - 1}")
        last = max(snapshots, default=-1)
        with self._lock:
            chain, added = [], 0
            for i in range(last + 1):
                entry, is_new = self._insert_block(hashes[i], latents, i, snapshots.get(i))
                added += is_new
                if entry is not None:
                    entry.refs += 1  # held while the rest of the chain is placed
                    chain.append(entry)
            for entry in chain:
                entry.refs -= 1
            self._touch_tail_first(chain)
            self._stats.inserted_blocks += added
            return added

    def acquire(self, hashes: Sequence[str]) -> PrefixHandle | None:
        """Pin and return the longest cached chain of `hashes` that ends with a snapshot, or
        None. Blocks missing locally are read from L3 when configured. The caller must leave
        at least one prompt token uncached (pass the hashes of blocks before the last token)."""
        with self._lock:
            self._stats.lookups += 1
            chain: list[BlockEntry] = []
            for block_hash in hashes:
                entry = self._entries.get(block_hash) or self._fetch_l3(block_hash)
                if entry is None:
                    break
                entry.refs += 1
                chain.append(entry)
            usable = max((i for i, e in enumerate(chain) if e.snapshot is not None), default=-1)
            for entry in chain[usable + 1 :]:
                entry.refs -= 1
            chain = chain[: usable + 1]
            if not chain:
                self._stats.misses += 1
                return None
            self._promote(chain)
            self._touch_tail_first(chain)
            handle = PrefixHandle(
                handle_id=next(self._ids),
                block_hashes=tuple(e.block_hash for e in chain),
                latents=torch.cat([e.latents.to(self._device) for e in chain], dim=1),
                state=chain[-1].snapshot.to(self._device),  # type: ignore[union-attr]
            )
            self._handles[handle.handle_id] = handle.block_hashes
            self._stats.hits += 1
            self._stats.hit_blocks += len(chain)
            return handle

    def release(self, handle: PrefixHandle) -> None:
        with self._lock:
            hashes = self._handles.pop(handle.handle_id, None)
            if hashes is None:
                raise ValueError(f"prefix handle {handle.handle_id} is unknown or released")
            for block_hash in hashes:
                self._entries[block_hash].refs -= 1

    def tier_of(self, block_hash: str) -> str | None:
        with self._lock:
            entry = self._entries.get(block_hash)
            return entry.tier if entry is not None else None

    def resident(self) -> list[BlockEvent]:
        """Every local block as an event (for a full republish to the index)."""
        with self._lock:
            return [
                BlockEvent(e.block_hash, e.tier, e.snapshot is not None)
                for e in self._entries.values()
            ]

    def pinned_blocks(self) -> int:
        """Blocks held by live handles (0 when no request is using the cache)."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.refs > 0)

    def num_blocks(self) -> int:
        with self._lock:
            return len(self._entries)

    def used_bytes(self) -> dict[str, int]:
        with self._lock:
            return {name: tier.used for name, tier in self._tiers.items()}

    def stats(self) -> PrefixStoreStats:
        with self._lock:
            return replace(self._stats, evictions=dict(self._stats.evictions))

    def check_integrity(self) -> None:
        with self._lock:
            local: dict[str, str] = {}
            for name, tier in self._tiers.items():
                tier.check_integrity()
                for entry in tier.entries():
                    assert entry.block_hash not in local, f"{entry.block_hash} in two tiers"
                    local[entry.block_hash] = name
            assert local.keys() == self._entries.keys(), "tier contents != entry map"
            pins = Counter(h for hashes in self._handles.values() for h in hashes)
            missing = [h for h in pins if h not in self._entries]
            assert not missing, f"pinned blocks missing: {missing}"
            for block_hash, entry in self._entries.items():
                assert entry.refs == pins[block_hash], (
                    f"{block_hash}: refs {entry.refs} != {pins[block_hash]} live handles"
                )

    def _insert_block(
        self, block_hash: str, latents: torch.Tensor, i: int, snapshot: torch.Tensor | None
    ) -> tuple[BlockEntry | None, bool]:
        """(the local entry for block i or None, whether a new block was stored)."""
        entry = self._entries.get(block_hash)
        if entry is not None and (snapshot is None or entry.snapshot is not None or entry.refs):
            return entry, False
        if entry is not None:  # unpinned and without a snapshot: re-placed with one
            self._tiers[entry.tier].remove(block_hash)
            del self._entries[block_hash]
        bs = self.cfg.block_size
        new = BlockEntry(
            block_hash,
            latents[:, i * bs : (i + 1) * bs].clone(),
            snapshot.detach().clone() if snapshot is not None else None,
        )
        placed = self._place(new, LOCAL_TIERS)
        if placed and self.cfg.l3_write_through:
            self._put_l3(new)
        if not placed:
            self._to_l3_or_drop(new, was_local=entry is not None)
        return (new if placed else None), True

    def _place(self, entry: BlockEntry, tiers: Sequence[str]) -> bool:
        """Put entry in the first of `tiers` with room, evicting unpinned LRU entries there."""
        for name in tiers:
            tier = self._tiers[name]
            if not tier.can_fit(entry.nbytes):
                continue
            for victim in tier.victims(entry.nbytes):
                self._evict(victim)
            tier.add(entry)
            self._entries[entry.block_hash] = entry
            self._emit(BlockEvent(entry.block_hash, name, entry.snapshot is not None))
            return True
        return False

    def _evict(self, victim: BlockEntry) -> None:
        """Demote an unpinned entry one tier down: L1 -> L2 -> L3 or gone."""
        origin = victim.tier
        self._tiers[origin].remove(victim.block_hash)
        del self._entries[victim.block_hash]
        self._stats.evictions[origin] += 1
        if origin == L1 and self._place(victim, (L2,)):
            return
        self._to_l3_or_drop(victim, was_local=True)

    def _to_l3_or_drop(self, entry: BlockEntry, was_local: bool) -> None:
        if was_local:
            self._emit(BlockEvent(entry.block_hash, None))
        if self.l3 is None or not self._put_l3(entry):
            self._stats.dropped += 1

    def _put_l3(self, entry: BlockEntry) -> bool:
        if self.l3 is None:
            return False
        data = encode_block(entry.block_hash, BlockData(entry.latents, entry.snapshot))
        if not self.l3.put(entry.block_hash, data):
            self._stats.l3_put_failures += 1
            return False
        self._stats.l3_puts += 1
        self._emit(BlockEvent(entry.block_hash, L3, entry.snapshot is not None))
        return True

    def _fetch_l3(self, block_hash: str) -> BlockEntry | None:
        """Load a block from L3 into a local tier; None when absent or with no local room."""
        if self.l3 is None:
            return None
        data = self.l3.get(block_hash)
        if data is None:
            self._stats.l3_misses += 1
            return None
        try:
            block = decode_block(block_hash, data)
        except BlockCodecError:
            self._stats.l3_corrupt += 1
            self.l3.delete(block_hash)
            return None
        entry = BlockEntry(block_hash, block.latents, block.snapshot)
        if not self._place(entry, LOCAL_TIERS):
            return None
        self._stats.l3_hits += 1
        return entry

    def _promote(self, chain: list[BlockEntry]) -> None:
        """Move a pinned chain's L2 entries up to L1 where room can be made."""
        l1, l2 = self._tiers[L1], self._tiers[L2]
        for entry in chain:
            if entry.tier != L2 or not l1.can_fit(entry.nbytes):
                continue
            for victim in l1.victims(entry.nbytes):
                self._evict(victim)
            l2.remove(entry.block_hash)
            l1.add(entry)
            self._emit(BlockEvent(entry.block_hash, L1, entry.snapshot is not None))

    def _touch_tail_first(self, chain: list[BlockEntry]) -> None:
        for entry in reversed(chain):
            self._tiers[entry.tier].touch(entry.block_hash)

    def _emit(self, event: BlockEvent) -> None:
        self._on_event(event)
