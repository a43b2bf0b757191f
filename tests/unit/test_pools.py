"""Allocator invariants: free + used == total, ref counts, all-or-nothing allocation."""

from __future__ import annotations

import pytest

from engine.cache.allocator import IdAllocator, OutOfCapacity


def test_allocate_release_and_integrity() -> None:
    a = IdAllocator(8, "pages")
    ids = a.allocate(5)
    assert len(set(ids)) == 5 and a.num_free == 3
    a.check_integrity()
    a.retain(ids[:2])
    a.release(ids)
    assert a.num_free == 6 and a.ref_count(ids[0]) == 1
    a.release(ids[:2])
    assert a.num_free == 8
    a.check_integrity()


def test_out_of_capacity_takes_nothing() -> None:
    a = IdAllocator(4, "slots")
    a.allocate(3)
    with pytest.raises(OutOfCapacity):
        a.allocate(2)
    assert a.num_free == 1


def test_double_free_is_an_error() -> None:
    a = IdAllocator(2, "slots")
    (i,) = a.allocate(1)
    a.release([i])
    with pytest.raises(ValueError, match="not allocated"):
        a.release([i])
    a.check_integrity()
