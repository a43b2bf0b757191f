"""Routing decisions over registry entries: cost order, exclusions, full vs missing pools,
conditional disaggregation, stale heartbeats and draining workers."""

from __future__ import annotations

import pytest

from control_plane.registry import Registry
from control_plane.router import NoRoom, NoWorker, Router
from duet.v1 import worker_pb2 as pb


def _load(queued: int = 0, free_slots: int = 8, free_pages: int = 100) -> pb.LoadResponse:
    return pb.LoadResponse(
        queued_tokens=queued,
        free_slots=free_slots,
        total_slots=8,
        free_pages=free_pages,
        total_pages=100,
    )


def _registry() -> Registry:
    r = Registry(expiry_s=60)
    r.register("p-busy", "prefill", "p1:1", _load(queued=5000))
    r.register("p-idle", "prefill", "p2:1", _load(queued=0))
    r.register("d-full", "decode", "d1:1", _load(free_slots=0))
    r.register("d-free", "decode", "d2:1", _load(free_slots=6))
    return r


def test_picks_the_cheaper_worker_of_each_role() -> None:
    router = Router(_registry())
    for _ in range(20):
        p, d = router.pick(100)
        assert p is not None and p.worker_id == "p-idle" and d.worker_id == "d-free"


def test_excluded_addresses_are_skipped() -> None:
    p, _ = Router(_registry()).pick(100, exclude=["p2:1"])
    assert p is not None and p.worker_id == "p-busy"


def test_full_pool_is_no_room_and_empty_pool_is_no_worker() -> None:
    r = _registry()
    r.deregister("d-free")
    with pytest.raises(NoRoom):
        Router(r).pick(10)
    r.deregister("d-full")
    with pytest.raises(NoWorker) as err:
        Router(r).pick(10)
    assert not isinstance(err.value, NoRoom)


def test_short_prompts_skip_the_prefill_worker() -> None:
    router = Router(_registry(), local_prefill_max_tokens=32)
    p, d = router.pick(32)
    assert p is None and d.worker_id == "d-free"
    p, _ = router.pick(33)
    assert p is not None


def test_draining_and_silent_workers_leave_the_rotation() -> None:
    r = _registry()
    r.heartbeat("p-idle", _load(), draining=True)
    p, _ = Router(r).pick(10)
    assert p is not None and p.worker_id == "p-busy"
    r.mark_failed("p1:1")
    with pytest.raises(NoWorker):
        Router(r).pick(10)
    assert r.heartbeat("p-busy", _load(), draining=False)  # it speaks again: back in
    assert Router(r).pick(10)[0] is not None
    assert not r.heartbeat("unknown", _load(), draining=False)  # register again


def _prefill_pool(queued: dict[str, int]) -> Registry:
    r = Registry(expiry_s=60)
    for i, (worker, q) in enumerate(queued.items()):
        r.register(worker, "prefill", f"p{i}:1", _load(queued=q))
    r.register("d", "decode", "d:1", _load(free_slots=6))
    return r


def test_a_cached_prefix_wins_over_an_idle_worker_without_it() -> None:
    router = Router(_prefill_pool({"holder": 200, "idle": 0, "other": 0}))
    for _ in range(20):  # 200 queued + 50 to compute beats 1000 to compute, every time
        p, _ = router.pick(1000, cached={"holder": 950})
        assert p is not None and p.worker_id == "holder"


def test_a_long_queue_outweighs_a_cached_prefix() -> None:
    router = Router(_prefill_pool({"holder": 50_000, "idle": 0}))
    for _ in range(20):
        p, _ = router.pick(1000, cached={"holder": 950})
        assert p is not None and p.worker_id == "idle"
