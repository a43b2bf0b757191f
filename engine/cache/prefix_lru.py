"""One bounded local tier of the prefix store: entries in LRU order with a byte budget.

Invariants (checked by `check_integrity`): `used` is the sum of the entries' sizes and never
exceeds `budget`; every entry's `tier` names this tier; entries with refs > 0 are never chosen
as eviction victims.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class BlockEntry:
    block_hash: str
    latents: torch.Tensor  # [mla_layers, block_size, W]
    snapshot: torch.Tensor | None  # [linear_layers, H, D, D] fp32 at the block's end
    tier: str = ""
    refs: int = 0  # pins by live handles (and by an insert in progress)

    @property
    def nbytes(self) -> int:
        size = self.latents.numel() * self.latents.element_size()
        if self.snapshot is not None:
            size += self.snapshot.numel() * self.snapshot.element_size()
        return size

    def move_to(self, device: torch.device) -> None:
        self.latents = self.latents.to(device)
        if self.snapshot is not None:
            self.snapshot = self.snapshot.to(device)


class TierLru:
    def __init__(self, name: str, budget: int, device: torch.device) -> None:
        if budget < 0:
            raise ValueError(f"{name} budget must be >= 0 bytes, got {budget}")
        self.name, self.budget, self.device = name, budget, device
        self.used = 0
        self._entries: OrderedDict[str, BlockEntry] = OrderedDict()  # first = least recent

    def __contains__(self, block_hash: str) -> bool:
        return block_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[BlockEntry]:
        return iter(self._entries.values())

    def add(self, entry: BlockEntry) -> None:
        """Add as most recent; the caller made room first."""
        assert self.used + entry.nbytes <= self.budget, f"{self.name} over budget"
        entry.move_to(self.device)
        entry.tier = self.name
        self._entries[entry.block_hash] = entry
        self.used += entry.nbytes

    def remove(self, block_hash: str) -> BlockEntry:
        entry = self._entries.pop(block_hash)
        self.used -= entry.nbytes
        entry.tier = ""
        return entry

    def touch(self, block_hash: str) -> None:
        self._entries.move_to_end(block_hash)

    def can_fit(self, nbytes: int) -> bool:
        """Whether evicting unpinned entries could free enough room for nbytes."""
        if nbytes > self.budget:
            return False
        free = self.budget - self.used
        if free >= nbytes:
            return True
        evictable = sum(e.nbytes for e in self._entries.values() if e.refs == 0)
        return free + evictable >= nbytes

    def victims(self, nbytes: int) -> list[BlockEntry]:
        """Least recent unpinned entries whose removal leaves room for nbytes (call can_fit
        first: when it is False the list does not free enough)."""
        chosen, free = [], self.budget - self.used
        for entry in self._entries.values():
            if free >= nbytes:
                break
            if entry.refs == 0:
                chosen.append(entry)
                free += entry.nbytes
        return chosen

    def check_integrity(self) -> None:
        total = 0
        for block_hash, entry in self._entries.items():
            assert entry.block_hash == block_hash, f"{self.name}: entry under the wrong key"
            assert entry.tier == self.name, f"{self.name}: {block_hash} says tier {entry.tier}"
            assert entry.refs >= 0, f"{self.name}: {block_hash} has refs {entry.refs}"
            total += entry.nbytes
        assert total == self.used, f"{self.name}: used {self.used} != sum of entries {total}"
        assert self.used <= self.budget, f"{self.name}: used {self.used} > budget {self.budget}"
