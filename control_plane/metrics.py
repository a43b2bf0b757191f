"""Prometheus metrics of the gateway (one registry per process, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, registry=r, buckets=LATENCY_BUCKETS)

        def pool(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["pool"], registry=r)

        self.ttft = hist("duet:time_to_first_token_seconds", "Time to first token")
        self.itl = hist("duet:inter_token_latency_seconds", "Time between tokens of a stream")
        self.e2e = hist("duet:e2e_request_latency_seconds", "Request latency")
        self.queue = hist("duet:request_queue_time_seconds", "Time until a worker pair took it")
        self.requests = Counter("duet:requests", "Requests by outcome", ["outcome"], registry=r)
        self.prompt_tokens = Counter("duet:prompt_tokens", "Prompt tokens", registry=r)
        self.generation_tokens = Counter("duet:generation_tokens", "Generated tokens", registry=r)
        self.retries = Counter("duet:retries", "Retried attempts", ["reason"], registry=r)
        self.migrations = Counter("duet:migrations", "Streams moved mid-generation", registry=r)
        self.prefix_lookup = Histogram(
            "duet:prefix_lookup_seconds",
            "Prefix index lookup time (one Redis round trip per model)",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.prefix_lookup_failures = Counter(
            "duet:prefix_lookup_failures", "Prefix lookups that fell back to no hits", registry=r
        )
        self.prefix_routed_tokens = Counter(
            "duet:prefix_routed_cached_tokens",
            "Prompt tokens the chosen prefill worker had cached (per the index)",
            registry=r,
        )
        self.pool_workers = pool("duet:pool_workers", "Healthy workers")
        self.pool_queued_tokens = pool("duet:pool_queued_tokens", "Queued prompt tokens")
        self.pool_running_requests = pool("duet:pool_running_requests", "Running requests")
        self.pool_free_slots = pool("duet:pool_free_slots", "Free state slots")
        self.pool_free_pages = pool("duet:pool_free_pages", "Free latent pages")
