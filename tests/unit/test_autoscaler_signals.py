"""Reading the autoscaler's signals from Prometheus text, as the control plane exports it."""

from __future__ import annotations

import pytest

from control_plane.autoscaler.signals import SignalReader, parse, quantile, window

BOUNDS = ("0.05", "0.1", "0.5", "1.0", "2.5", "+Inf")


def exposition(queued: float, running: float, free: float, ttft: list[int], itl: list[int]) -> str:
    """Metrics text with per-bucket (non-cumulative) counts for the two histograms."""
    lines = [
        "# TYPE duet:pool_workers gauge",
        'duet:pool_workers{pool="prefill"} 2',
        'duet:pool_workers{pool="decode"} 3',
        "# TYPE duet:pool_queued_tokens gauge",
        f'duet:pool_queued_tokens{{pool="prefill"}} {queued}',
        "# TYPE duet:pool_running_requests gauge",
        f'duet:pool_running_requests{{pool="decode"}} {running}',
        "# TYPE duet:pool_free_slots gauge",
        f'duet:pool_free_slots{{pool="decode"}} {free}',
    ]
    for name, counts in (("time_to_first_token", ttft), ("inter_token_latency", itl)):
        metric = f"duet:{name}_seconds"
        lines.append(f"# TYPE {metric} histogram")
        total = 0
        for bound, count in zip(BOUNDS, counts, strict=True):
            total += count
            lines.append(f'{metric}_bucket{{le="{bound}",model="ling"}} {total}')
        lines += [f'{metric}_sum{{model="ling"}} 1.0', f'{metric}_count{{model="ling"}} {total}']
    return "\n".join(lines) + "\n"


def test_gauges_by_pool() -> None:
    scrape = parse(exposition(1234, 7, 41, [0] * 6, [0] * 6))
    assert scrape.gauges[("duet:pool_queued_tokens", "prefill")] == 1234
    assert scrape.gauges[("duet:pool_free_slots", "decode")] == 41
    assert scrape.histograms["duet:time_to_first_token_seconds"][float("inf")] == 0


def test_quantile_interpolates_inside_the_bucket() -> None:
    # 10 observations: 8 under 0.1 s, 2 in (0.1, 0.5]: p90 is the 9th, halfway into the bucket.
    buckets = {0.05: 4.0, 0.1: 8.0, 0.5: 10.0, float("inf"): 10.0}
    assert quantile(0.9, buckets) == pytest.approx(0.3)
    assert quantile(0.9, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.9, {0.1: 0.0, float("inf"): 5.0}) == 0.1  # open top bucket


def test_window_is_the_delta_and_survives_a_counter_reset() -> None:
    before = {0.1: 5.0, float("inf"): 6.0}
    assert window(before, {0.1: 7.0, float("inf"): 10.0}) == {0.1: 2.0, float("inf"): 4.0}
    assert window(before, {0.1: 1.0, float("inf"): 1.0}) == {0.1: 1.0, float("inf"): 1.0}


def test_latency_is_the_p90_between_two_scrapes() -> None:
    reader = SignalReader()
    # Slow history before the first scrape must not count.
    first = reader.read(exposition(0, 0, 48, [0, 0, 0, 0, 0, 100], [0, 0, 0, 0, 0, 100]))
    assert first["prefill"].latency_p90_s is None and first["decode"].latency_p90_s is None
    ttft = [0, 0, 0, 0, 0, 100]
    ttft[3] += 10  # ten first tokens in (0.5, 1.0]
    itl = [0, 0, 0, 0, 0, 100]
    itl[0] += 50  # fifty tokens under 50 ms
    second = reader.read(exposition(5000, 9, 39, ttft, itl))
    assert second["prefill"].latency_p90_s == pytest.approx(0.95)
    assert second["decode"].latency_p90_s == pytest.approx(0.045)
    assert second["prefill"].queued_tokens == 5000 and second["prefill"].workers == 2
    decode = second["decode"]
    assert (decode.workers, decode.running_requests, decode.free_slots) == (3, 9, 39)
    # No observations in the next interval: no latency, not the old value.
    assert reader.read(exposition(0, 0, 48, ttft, itl))["decode"].latency_p90_s is None


def test_missing_metrics_read_as_unknown() -> None:
    signals = SignalReader().read("# nothing exported yet\n")
    assert signals["decode"].running_requests is None and signals["prefill"].workers is None
