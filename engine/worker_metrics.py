"""Prometheus metrics of one worker, served on --metrics-port (env DUET_METRICS_PORT)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LoadFn = Callable[[], dict[str, object]]
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LOAD_GAUGES = {
    "running_requests": "Requests running on this worker",
    "queued_requests": "Requests waiting on this worker",
    "free_pages": "Free latent pages",
    "free_slots": "Free state slots",
    "pending_transfers": "Cache transfers not yet committed",
}
PREFIX_COUNTERS = {
    "lookups": "Prefix cache lookups",
    "hits": "Prefix cache lookups that found a cached prefix",
    "hit_tokens": "Prompt tokens loaded from the prefix cache instead of computed",
    "computed_tokens": "Prompt tokens computed by prefill",
    "evictions": "Prefix blocks evicted from L1 or L2",
    "l3_hits": "Prefix blocks loaded from the shared L3 tier",
}
PREFIX_GAUGES = {
    "blocks": "Prefix blocks held in L1 and L2",
    "l1_bytes": "Bytes of prefix blocks in L1 (device memory)",
    "l2_bytes": "Bytes of prefix blocks in L2 (host memory)",
    "pinned_blocks": "Prefix blocks in use by running prefills",
    "redis_healthy": "1 while the prefix index / L3 Redis answers, else 0",
}


class _LoadCollector(Collector):
    def __init__(self, role: str, load: LoadFn) -> None:
        self.role, self.load = role, load

    def collect(self) -> Iterator[Metric]:
        values = self.load()
        for key, doc in LOAD_GAUGES.items():
            family = GaugeMetricFamily(f"duet:worker_{key}", doc, labels=["role"])
            family.add_metric([self.role], float(values.get(key, 0)))  # type: ignore[arg-type]
            yield family
        prefix = values.get("prefix_cache")
        if isinstance(prefix, dict):  # prefill workers with the cache on
            yield from _prefix_metrics(prefix)


def _prefix_metrics(prefix: dict[str, object]) -> Iterator[Metric]:
    for key, doc in PREFIX_COUNTERS.items():
        yield CounterMetricFamily(f"duet:prefix_cache_{key}", doc, value=float(prefix[key]))  # type: ignore[arg-type]
    for key, doc in PREFIX_GAUGES.items():
        yield GaugeMetricFamily(f"duet:prefix_cache_{key}", doc, value=float(prefix[key]))  # type: ignore[arg-type]


class WorkerMetrics:
    def __init__(self, role: str) -> None:
        self.role = role
        r = self.registry = CollectorRegistry()
        self.transfer_bytes = Counter(
            "duet:transfer_bytes", "Cache bytes sent or received", registry=r
        )
        self.transfer_seconds = Histogram(
            "duet:transfer_seconds", "Cache transfer time", buckets=BUCKETS, registry=r
        )
        self.transfer_failures = Counter(
            "duet:transfer_failures", "Failed cache transfers", ["reason"], registry=r
        )
        self.step_seconds = Histogram(
            "duet:step_seconds", "Model step time", buckets=BUCKETS, registry=r
        )
        self.tokens = Counter("duet:worker_tokens", "Tokens prefilled or generated", registry=r)

    def watch_load(self, load: LoadFn) -> None:
        self.registry.register(_LoadCollector(self.role, load))

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a background thread (port 0: not served)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
