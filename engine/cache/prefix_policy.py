"""Which block boundaries of a prompt get a Lightning state snapshot.

A prefix can only resume where a snapshot exists, and a snapshot is large (Ling-2.6-flash:
56 MiB), so this is a policy: `every` block, `every:K` blocks (plus the prompt's last full
block, where a follow-up turn of a chat resumes), or only the `last` full block.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("every", "every_k", "last")


@dataclass(frozen=True)
class SnapshotPolicy:
    kind: str = "last"
    k: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"snapshot policy must be one of {KINDS}, got {self.kind!r}")
        if self.k < 1:
            raise ValueError(f"snapshot policy k must be >= 1, got {self.k}")

    @classmethod
    def parse(cls, text: str) -> SnapshotPolicy:
        """'every', 'last' or 'every:K' (the form of a command-line flag)."""
        name, _, count = text.strip().partition(":")
        if name == "every" and count:
            try:
                return cls("every_k", int(count))
            except ValueError as exc:
                raise ValueError(f"bad snapshot policy {text!r}: {exc}") from exc
        if count or name not in ("every", "last"):
            raise ValueError(f"bad snapshot policy {text!r}; use every, every:K or last")
        return cls(name)

    def blocks(self, num_full_blocks: int, start_block: int = 0) -> list[int]:
        """Indices i (block i ends at token (i + 1) * block_size) that get a snapshot, among
        blocks start_block..num_full_blocks-1 (blocks before start_block are already cached)."""
        if num_full_blocks <= 0:
            return []
        last = num_full_blocks - 1
        if self.kind == "every":
            chosen = range(num_full_blocks)
        elif self.kind == "every_k":
            chosen = sorted({*range(self.k - 1, num_full_blocks, self.k), last})
        else:
            chosen = [last]
        return [i for i in chosen if i >= start_block]

    def token_counts(
        self, num_tokens: int, block_size: int, start_block: int = 0
    ) -> tuple[int, ...]:
        """The same boundaries as token counts (the runner's `snapshot_at`)."""
        blocks = self.blocks(num_tokens // block_size, start_block)
        return tuple((i + 1) * block_size for i in blocks)
