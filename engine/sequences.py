"""What a sequence holds in a worker's pools, and one prefill call's share of it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
