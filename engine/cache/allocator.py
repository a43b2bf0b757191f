"""Plain-Python id allocators with reference counts; no device code.

Invariant (checked by `check_integrity`): every id in [0, total) is either free (in the free
list exactly once, ref count 0) or used (ref count >= 1), so free + used == total.
"""

from __future__ import annotations

import threading


class OutOfCapacity(RuntimeError):
    """The pool has fewer free ids than asked for; nothing was allocated."""


class IdAllocator:
    def __init__(self, total: int, kind: str) -> None:
        if total <= 0:
            raise ValueError(f"{kind} pool needs a positive size, got {total}")
        self.total, self.kind = total, kind
        self._free = list(range(total - 1, -1, -1))  # pop() hands out low ids first
        self._refs = [0] * total
        self._lock = threading.Lock()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.total - len(self._free)

    def allocate(self, n: int) -> list[int]:
        """n fresh ids with ref count 1, or OutOfCapacity with nothing taken."""
        with self._lock:
            if n > len(self._free):
                raise OutOfCapacity(
                    f"{self.kind}: asked for {n}, {len(self._free)} free of {self.total}"
                )
            ids = [self._free.pop() for _ in range(n)]
            for i in ids:
                self._refs[i] = 1
            return ids

    def retain(self, ids: list[int]) -> None:
        """Share already-used ids (e.g. a cached prefix page) with one more owner."""
        with self._lock:
            for i in ids:
                self._check_used(i)
                self._refs[i] += 1

    def release(self, ids: list[int]) -> None:
        """Drop one reference per id; an id whose count reaches zero becomes free."""
        with self._lock:
            for i in ids:
                self._check_used(i)
                self._refs[i] -= 1
                if self._refs[i] == 0:
                    self._free.append(i)

    def ref_count(self, i: int) -> int:
        return self._refs[i]

    def _check_used(self, i: int) -> None:
        if not 0 <= i < self.total or self._refs[i] <= 0:
            raise ValueError(f"{self.kind}: id {i} is not allocated (double free?)")

    def check_integrity(self) -> None:
        with self._lock:
            free = set(self._free)
            if len(free) != len(self._free):
                raise AssertionError(f"{self.kind}: an id is free twice")
            for i in range(self.total):
                if (i in free) != (self._refs[i] == 0) or self._refs[i] < 0:
                    raise AssertionError(
                        f"{self.kind}: id {i} free={i in free} refs={self._refs[i]}"
                    )
