"""The small vocabulary shared by the prefix store (worker side) and the prefix index (Redis):
tier names and the events a store reports when a block's residency changes."""

from __future__ import annotations

from dataclasses import dataclass

L1 = "l1"  # device memory (a bounded set of tensors on the CPU build)
L2 = "l2"  # host memory
L3 = "l3"  # the shared data tier (Redis): any worker can load a block from it
LOCAL_TIERS = (L1, L2)
TIERS = (L1, L2, L3)


@dataclass(frozen=True)
class BlockEvent:
    """Block `block_hash` now lives in `tier` on the reporting worker (L1/L2), or was written
    to the shared L3 tier, or (`tier` None) no longer lives on the reporting worker.
    `snapshot`: the copy there carries the Lightning state at the block's end, so a prefix can
    resume right after this block."""

    block_hash: str
    tier: str | None
    snapshot: bool = False

    def __post_init__(self) -> None:
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r}; expected one of {TIERS}")
