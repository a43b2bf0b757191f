"""The scaling policy's decisions over load scenarios (a pure function: no I/O)."""

from __future__ import annotations

import random

import pytest

from control_plane.autoscaler.policy import (
    Decision,
    PolicyConfig,
    PoolBounds,
    PoolSignals,
    PoolState,
    decide,
)

CFG = PolicyConfig(
    prefill=PoolBounds(1, 6),
    decode=PoolBounds(1, 6),
    cooldown_s=60.0,
    prefill_tokens_per_worker=1000.0,
    decode_target_utilization=0.8,
    ttft_p90_target_s=2.0,
    itl_p90_target_s=0.1,
    idle_fraction=0.5,
    scale_down_after=3,
)
NOW = 1000.0


def decode_load(running: float, workers: int, slots_per_worker: int = 16) -> PoolSignals:
    free = workers * slots_per_worker - running
    return PoolSignals(workers=workers, running_requests=running, free_slots=free)


def prefill_queue(tokens: float, workers: int = 1) -> PoolSignals:
    return PoolSignals(workers=workers, queued_tokens=tokens)


def run(pool: str, state: PoolState, signals: PoolSignals, now: float = NOW) -> Decision:
    return decide(pool, state, signals, CFG, now)


def test_prefill_grows_to_what_the_queue_needs() -> None:
    decision = run("prefill", PoolState(1), prefill_queue(3500))
    assert (decision.replicas, decision.changed) == (4, True)
    assert decision.reason == "load needs 4"
    assert decision.state.last_change_at == NOW


def test_growth_stops_at_max() -> None:
    assert run("prefill", PoolState(2), prefill_queue(50_000)).replicas == 6
    held = run("prefill", PoolState(6), prefill_queue(50_000))
    assert (held.replicas, held.changed, held.reason) == (6, False, "at max")


def test_slow_first_tokens_add_a_prefill_worker_even_with_a_short_queue() -> None:
    slow = PoolSignals(workers=2, queued_tokens=100, latency_p90_s=3.5)
    decision = run("prefill", PoolState(2), slow)
    assert decision.replicas == 3
    assert "p90 latency 3.500s > 2.0s" in decision.reason


def test_decode_grows_when_slots_run_short() -> None:
    # 2 workers x 16 slots, 30 running: 30 / (16 * 0.8) -> 3 workers.
    decision = run("decode", PoolState(2), decode_load(30, workers=2))
    assert decision.replicas == 3


def test_slow_tokens_add_a_decode_worker() -> None:
    signals = PoolSignals(workers=2, running_requests=4, free_slots=28, latency_p90_s=0.25)
    assert run("decode", PoolState(2), signals).replicas == 3


def test_nothing_changes_during_cooldown() -> None:
    state = PoolState(2, last_change_at=NOW - 59.0)
    decision = run("decode", state, decode_load(32, workers=2))
    assert (decision.replicas, decision.changed, decision.reason) == (2, False, "cooling down")
    after = run("decode", state, decode_load(32, workers=2), now=NOW + 1.0)
    assert after.changed and after.replicas == 3


def test_scale_down_waits_for_consecutive_idle_evaluations() -> None:
    state = PoolState(4)
    idle = decode_load(2, workers=4)
    for streak in (1, 2):
        decision = run("decode", state, idle)
        assert (decision.changed, decision.state.idle_streak) == (False, streak)
        state = decision.state
    decision = run("decode", state, idle)
    assert (decision.replicas, decision.changed) == (3, True)
    assert decision.state.idle_streak == 0


def test_a_busy_evaluation_resets_the_idle_streak() -> None:
    state = PoolState(4, idle_streak=2)
    busy = decode_load(30, workers=4)  # fits in 3 workers at 0.8, not at 0.4
    decision = run("decode", state, busy)
    assert (decision.changed, decision.state.idle_streak) == (False, 0)


def test_scale_down_is_one_replica_at_a_time() -> None:
    decision = run("prefill", PoolState(6, idle_streak=2), prefill_queue(0, workers=6))
    assert decision.replicas == 5


def test_never_below_min() -> None:
    decision = run("decode", PoolState(1, idle_streak=5), decode_load(0, workers=1))
    assert not decision.changed
    raised = run("decode", PoolState(0), decode_load(0, workers=1))
    assert raised.replicas == 1


def test_never_below_what_running_requests_need() -> None:
    # 3 workers with 4 slots each run 9 sequences: 2 workers cannot hold them.
    cfg = PolicyConfig(prefill=CFG.prefill, decode=PoolBounds(1, 2), idle_fraction=1.0)
    signals = PoolSignals(workers=3, running_requests=9, free_slots=3)
    decision = decide("decode", PoolState(3, idle_streak=9), signals, cfg, NOW)
    assert decision.replicas == 3 and not decision.changed
    assert "in-flight work needs 3" in decision.reason


def test_above_max_comes_down_to_max_when_work_allows() -> None:
    decision = run("decode", PoolState(9), decode_load(4, workers=9))
    assert (decision.replicas, decision.reason) == (6, "above max 6")


def test_latency_must_be_calm_to_scale_down() -> None:
    # Queue is empty but TTFT p90 sits between half the target and the target: hold.
    signals = PoolSignals(workers=3, queued_tokens=0, latency_p90_s=1.5)
    decision = run("prefill", PoolState(3, idle_streak=5), signals)
    assert not decision.changed and decision.state.idle_streak == 0


@pytest.mark.parametrize(
    "signals",
    [PoolSignals(), PoolSignals(workers=0, running_requests=0, free_slots=0)],
)
def test_without_signals_the_pool_holds(signals: PoolSignals) -> None:
    decision = run("decode", PoolState(3, idle_streak=2), signals)
    assert (decision.replicas, decision.changed, decision.reason) == (3, False, "no signals")


def test_invariants_over_random_scenarios() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        current = rng.randint(0, 9)
        workers = rng.randint(0, 9)
        slots = rng.choice([1, 4, 16])
        running = rng.randint(0, workers * slots)
        latency = rng.choice([None, 0.01, 0.07, 0.3])
        last = rng.choice([None, NOW - 10.0, NOW - 100.0])
        state = PoolState(current, last_change_at=last, idle_streak=rng.randint(0, 4))
        signals = PoolSignals(workers, None, running, workers * slots - running, latency)
        decision = run("decode", state, signals)
        if last == NOW - 10.0:
            assert not decision.changed
        if decision.replicas < current:
            assert decision.replicas == current - 1 or current > CFG.decode.max_replicas
            assert decision.replicas >= CFG.decode.min_replicas
            assert decision.replicas * slots >= running
        if decision.replicas > current:
            assert decision.replicas <= max(CFG.decode.max_replicas, CFG.decode.min_replicas)
