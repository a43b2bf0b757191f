"""Reads the autoscaler's signals from the control plane's Prometheus text (GET /metrics).

Gauges, one sample per pool (label pool="prefill" or pool="decode"), summed over the pool's
registered workers:
  duet:pool_workers            healthy registered workers
  duet:pool_queued_tokens      prompt tokens waiting to be prefilled (prefill pool)
  duet:pool_running_requests   sequences in running batches (decode pool)
  duet:pool_free_slots         free linear-state slots, i.e. more sequences it can admit (decode)
Histograms (gateway-wide, summed over any other labels):
  duet:time_to_first_token_seconds    drives the prefill pool
  duet:inter_token_latency_seconds    drives the decode pool
Latency is the p90 of the observations made between two scrapes (bucket deltas, linear
interpolation inside a bucket as PromQL's histogram_quantile does), so the first scrape gives
no latency, and an interval without observations gives none either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from control_plane.autoscaler.policy import PoolSignals

WORKERS = "duet:pool_workers"
QUEUED_TOKENS = "duet:pool_queued_tokens"
RUNNING_REQUESTS = "duet:pool_running_requests"
FREE_SLOTS = "duet:pool_free_slots"
TTFT = "duet:time_to_first_token_seconds"
ITL = "duet:inter_token_latency_seconds"
GAUGES = (WORKERS, QUEUED_TOKENS, RUNNING_REQUESTS, FREE_SLOTS)
HISTOGRAMS = (TTFT, ITL)
LATENCY_OF_POOL = {"prefill": TTFT, "decode": ITL}
QUANTILE = 0.9

Buckets = dict[float, float]  # upper bound -> cumulative count


@dataclass(frozen=True)
class Scrape:
    gauges: Mapping[tuple[str, str], float] = field(default_factory=dict)
    histograms: Mapping[str, Buckets] = field(default_factory=dict)


def parse(text: str) -> Scrape:
    """The gauges by (name, pool) and the histograms' cumulative buckets by name."""
    gauges: dict[tuple[str, str], float] = {}
    histograms: dict[str, Buckets] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in GAUGES and "pool" in sample.labels:
                key = (sample.name, sample.labels["pool"])
                gauges[key] = gauges.get(key, 0.0) + sample.value
            base = sample.name.removesuffix("_bucket")
            if base in HISTOGRAMS and sample.name.endswith("_bucket"):
                buckets = histograms.setdefault(base, {})
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(gauges=gauges, histograms=histograms)


def quantile(q: float, buckets: Buckets) -> float | None:
    """histogram_quantile over cumulative buckets; None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the open top bucket: the highest finite bound
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def window(previous: Buckets, current: Buckets) -> Buckets:
    """Observations made since `previous`; all of `current` after a counter reset."""
    delta = {b: current[b] - previous.get(b, 0.0) for b in current}
    if any(v < 0 for v in delta.values()):
        return dict(current)
    return delta


class SignalReader:
    """Turns successive scrapes into per-pool signals; remembers the last histograms."""

    def __init__(self) -> None:
        self._last: Scrape | None = None

    def read(self, text: str) -> dict[str, PoolSignals]:
        scrape = parse(text)
        previous = self._last.histograms if self._last else None
        self._last = scrape
        return {pool: self._pool(scrape, previous, pool) for pool in LATENCY_OF_POOL}

    @staticmethod
    def _pool(scrape: Scrape, previous: Mapping[str, Buckets] | None, pool: str) -> PoolSignals:
        def gauge(name: str) -> float | None:
            return scrape.gauges.get((name, pool))

        workers = gauge(WORKERS)
        name = LATENCY_OF_POOL[pool]
        current = scrape.histograms.get(name)
        latency = None
        if current is not None and previous is not None:
            latency = quantile(QUANTILE, window(previous.get(name, {}), current))
        return PoolSignals(
            workers=None if workers is None else int(workers),
            queued_tokens=gauge(QUEUED_TOKENS),
            running_requests=gauge(RUNNING_REQUESTS),
            free_slots=gauge(FREE_SLOTS),
            latency_p90_s=latency,
        )
