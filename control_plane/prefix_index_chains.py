"""The router's view of the prefix index: for a prompt's blocks, how many leading blocks each
worker could load (from its own tiers, or from the shared L3 tier that every worker reads).

A holder's value in the index is `<expires_at_ms>:<tier>:<s|->[:<incarnation>]` ('s': that
copy carries the Lightning snapshot at the block's end; the incarnation names the worker
process that published it, so a worker restarted under the same id is not credited with what
its previous process held). A prefix resumes only after a block with a snapshot, so a chain
counts up to its last block with one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.cache.prefix_types import L3

SHARED_HOLDER = "@l3"  # the index field that stands for the shared L3 tier


@dataclass(frozen=True)
class Holding:
    tier: str
    snapshot: bool
    incarnation: str = ""


@dataclass(frozen=True)
class PrefixLookup:
    """chains[w]: leading blocks worker w can resume from (own tiers and shared L3 together);
    shared: leading blocks any worker can resume from through L3 alone. `ok` is False when
    Redis could not be asked (then everything is a miss)."""

    chains: dict[str, int] = field(default_factory=dict)
    shared: int = 0
    ok: bool = True

    def blocks_for(self, worker_id: str) -> int:
        return max(self.chains.get(worker_id, 0), self.shared)

    def best(self) -> tuple[str, int] | None:
        """The worker with the longest chain (ties: the smallest id), or None without hits."""
        ranked = sorted(self.chains.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[0] if ranked and ranked[0][1] > 0 else None


def encode_holding(expires_at_ms: int, tier: str, snapshot: bool, incarnation: str = "") -> str:
    value = f"{expires_at_ms}:{tier}:{'s' if snapshot else '-'}"
    return f"{value}:{incarnation}" if incarnation else value


def decode_holding(value: str) -> Holding | None:
    """The holding, or None for a value in an unknown format (ignored, never an error)."""
    parts = value.split(":")
    if len(parts) not in (3, 4) or parts[2] not in ("s", "-"):
        return None
    incarnation = parts[3] if len(parts) == 4 else ""
    return Holding(tier=parts[1], snapshot=parts[2] == "s", incarnation=incarnation)


def _usable(available: Sequence[bool], snapshot: Sequence[bool]) -> int:
    """1 + the last i such that blocks 0..i are all available and block i has a snapshot."""
    best = 0
    for i, (present, snap) in enumerate(zip(available, snapshot, strict=True)):
        if not present:
            break
        if snap:
            best = i + 1
    return best


def _current(
    blocks: Sequence[Mapping[str, Holding]], incarnations: Mapping[str, str]
) -> list[dict[str, Holding]]:
    """The holdings published by each worker's current process (others are dropped)."""
    return [
        {
            w: h
            for w, h in b.items()
            if w == SHARED_HOLDER or w not in incarnations or h.incarnation == incarnations[w]
        }
        for b in blocks
    ]


def longest_chains(
    blocks: Sequence[Mapping[str, Holding]], incarnations: Mapping[str, str] | None = None
) -> PrefixLookup:
    """blocks[i]: holder -> holding for block i of the prompt (holder SHARED_HOLDER = L3).
    `incarnations`: worker id -> its current process; older processes' holdings are ignored."""
    if incarnations:
        blocks = _current(blocks, incarnations)
    shared_has = [SHARED_HOLDER in b for b in blocks]
    shared_snap = [b[SHARED_HOLDER].snapshot if SHARED_HOLDER in b else False for b in blocks]
    workers = sorted({w for b in blocks for w in b if w != SHARED_HOLDER})
    chains = {}
    for w in workers:
        has = [w in b or shared for b, shared in zip(blocks, shared_has, strict=True)]
        # A worker resumes from its own copy when it has one, else from the L3 copy.
        snap = [b[w].snapshot if w in b else s for b, s in zip(blocks, shared_snap, strict=True)]
        length = _usable(has, snap)
        if length:
            chains[w] = length
    return PrefixLookup(chains=chains, shared=_usable(shared_has, shared_snap))


def holder_for(worker_id: str, tier: str | None) -> str:
    """The index field an event of `worker_id` updates: L3 copies are everyone's."""
    return SHARED_HOLDER if tier == L3 else worker_id
