"""The scaling policy: a pure function from (pool state, signals, config, now) to a decision.

Per pool, in this order:
1. Cool-down: within `cooldown_s` of this pool's last change nothing changes.
2. Missing signals (no scrape, no registered workers to size slots from): hold, except that
   the replica count is brought inside [min, max].
3. Scale up when the load needs more workers than there are replicas, or when the pool's p90
   latency (TTFT for prefill, inter-token latency for decode) is over its target: to what the
   load needs, and at least one more; never above max.
4. Scale down one replica at a time, only after `scale_down_after` consecutive evaluations in
   which the load would fit in one replica fewer with room to spare (`idle_fraction` of the
   target) and latency is comfortably under its target.
5. Never below min, and never below what in-flight work needs: running requests divided by
   the slots one decode worker has (prefill: queued tokens over the per-worker target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PoolBounds:
    min_replicas: int
    max_replicas: int

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class PolicyConfig:
    prefill: PoolBounds
    decode: PoolBounds
    cooldown_s: float = 120.0
    # Queued prompt tokens one prefill worker is expected to absorb within the TTFT target.
    prefill_tokens_per_worker: float = 16384.0
    # Fraction of a decode pool's slots in use that it should run at.
    decode_target_utilization: float = 0.8
    ttft_p90_target_s: float = 2.0
    itl_p90_target_s: float = 0.1
    # Scale down only if the load fits in one replica fewer at this fraction of the target.
    idle_fraction: float = 0.5
    scale_down_after: int = 3

    def bounds(self, pool: str) -> PoolBounds:
        return self.prefill if pool == "prefill" else self.decode


@dataclass(frozen=True)
class PoolSignals:
    """One pool's view from the control plane's metrics; None where a value is unknown."""

    workers: int | None = None
    queued_tokens: float | None = None
    running_requests: float | None = None
    free_slots: float | None = None
    # p90 over the last scrape interval: TTFT for prefill, inter-token latency for decode.
    latency_p90_s: float | None = None


@dataclass(frozen=True)
class PoolState:
    replicas: int
    last_change_at: float | None = None
    idle_streak: int = 0


@dataclass(frozen=True)
class Decision:
    previous: int
    replicas: int
    reason: str
    state: PoolState

    @property
    def changed(self) -> bool:
        return self.replicas != self.previous


def in_cooldown(state: PoolState, now: float, cooldown_s: float) -> bool:
    return state.last_change_at is not None and now - state.last_change_at < cooldown_s


@dataclass(frozen=True)
class _Load:
    """A pool's load in worker units: `need` at the target, `floor` for in-flight work only,
    `fits_in_fewer` when one replica fewer would still run under idle_fraction of the target."""

    need: int
    floor: int
    fits_in_fewer: bool


def _prefill_load(s: PoolSignals, replicas: int, cfg: PolicyConfig) -> _Load | None:
    if s.queued_tokens is None:
        return None
    per_worker = cfg.prefill_tokens_per_worker
    need = math.ceil(s.queued_tokens / per_worker)
    fits = s.queued_tokens <= per_worker * (replicas - 1) * cfg.idle_fraction
    return _Load(need=need, floor=need, fits_in_fewer=fits)


def _decode_load(s: PoolSignals, replicas: int, cfg: PolicyConfig) -> _Load | None:
    if s.running_requests is None or s.free_slots is None or not s.workers:
        return None
    slots_per_worker = (s.running_requests + s.free_slots) / s.workers
    if slots_per_worker <= 0:
        return None
    running = s.running_requests
    need = math.ceil(running / (slots_per_worker * cfg.decode_target_utilization))
    floor = math.ceil(running / slots_per_worker)
    room = slots_per_worker * (replicas - 1) * cfg.decode_target_utilization * cfg.idle_fraction
    return _Load(need=need, floor=floor, fits_in_fewer=running <= room)


def _latency_target(pool: str, cfg: PolicyConfig) -> float:
    return cfg.ttft_p90_target_s if pool == "prefill" else cfg.itl_p90_target_s


def _change(state: PoolState, replicas: int, reason: str, now: float) -> Decision:
    new_state = PoolState(replicas=replicas, last_change_at=now, idle_streak=0)
    return Decision(state.replicas, replicas, reason, new_state)


def _hold(state: PoolState, reason: str, idle_streak: int = 0) -> Decision:
    return Decision(state.replicas, state.replicas, reason, replace(state, idle_streak=idle_streak))


def _scale_up_to(load: _Load, current: int, slow: bool, bounds: PoolBounds) -> int:
    wanted = max(load.need, current + 1) if (load.need > current or slow) else current
    return bounds.clamp(wanted)


def decide(
    pool: str, state: PoolState, signals: PoolSignals, cfg: PolicyConfig, now: float
) -> Decision:
    """The replica count `pool` should have now, with the reason and the next state."""
    bounds = cfg.bounds(pool)
    current = state.replicas
    if in_cooldown(state, now, cfg.cooldown_s):
        return _hold(state, "cooling down")
    load = (_prefill_load if pool == "prefill" else _decode_load)(signals, current, cfg)
    if load is None:
        if bounds.clamp(current) != current:
            return _change(state, bounds.clamp(current), "outside bounds, no signals", now)
        return _hold(state, "no signals")
    target = _latency_target(pool, cfg)
    latency = signals.latency_p90_s
    slow = latency is not None and latency > target
    up = _scale_up_to(load, current, slow, bounds)
    if up > current:
        why = f"p90 latency {latency:.3f}s > {target}s" if slow else f"load needs {load.need}"
        return _change(state, up, why, now)
    if current > bounds.max_replicas:
        down = max(bounds.max_replicas, load.floor)
        if down < current:
            return _change(state, down, f"above max {bounds.max_replicas}", now)
        return _hold(state, f"above max, in-flight work needs {load.floor}")
    calm = latency is None or latency <= target * cfg.idle_fraction
    floor = max(bounds.min_replicas, load.floor)
    if not (load.fits_in_fewer and calm and current - 1 >= floor):
        return _hold(state, "at max" if slow or load.need > current else f"load needs {load.need}")
    streak = state.idle_streak + 1
    if streak < cfg.scale_down_after:
        return _hold(state, f"idle {streak}/{cfg.scale_down_after}", idle_streak=streak)
    return _change(state, current - 1, f"idle for {streak} evaluations", now)
