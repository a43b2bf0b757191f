"""One autoscaler evaluation per tick: scrape the metrics, decide each pool, patch its scale."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace

from kubernetes.client.exceptions import OpenApiException
from urllib3.exceptions import HTTPError

from control_plane.autoscaler.kube import DeploymentScaler
from control_plane.autoscaler.policy import (
    Decision,
    PolicyConfig,
    PoolSignals,
    PoolState,
    decide,
    in_cooldown,
)
from control_plane.autoscaler.signals import SignalReader

POOLS = ("prefill", "decode")
log = logging.getLogger("duet.autoscaler")


def http_metrics(url: str, timeout_s: float = 5.0) -> Callable[[], str]:
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))

    return fetch


class Autoscaler:
    """Scales `<prefix>-prefill` and `<prefix>-decode` separately.

    A pool in cool-down is not even read: no Kubernetes request is made for it. A failed
    scrape or API call skips that tick (or pool) and is retried on the next one.
    """

    def __init__(
        self,
        scaler: DeploymentScaler,
        fetch_metrics: Callable[[], str],
        config: PolicyConfig,
        prefix: str,
        clock: Callable[[], float] = time.monotonic,
        dry_run: bool = False,
    ) -> None:
        self._scaler = scaler
        self._fetch = fetch_metrics
        self._config = config
        self._prefix = prefix
        self._clock = clock
        self._dry_run = dry_run
        self._reader = SignalReader()
        self._states: dict[str, PoolState] = {}

    def deployment(self, pool: str) -> str:
        return f"{self._prefix}-{pool}"

    def tick(self) -> dict[str, Decision]:
        try:
            signals = self._reader.read(self._fetch())
        except (OSError, ValueError) as err:
            log.warning("metrics scrape failed, holding: %s", err)
            return {}
        decisions: dict[str, Decision] = {}
        for pool in POOLS:
            try:
                decision = self._evaluate(pool, signals[pool])
            except (OpenApiException, HTTPError, OSError) as err:
                log.warning("%s: kubernetes API call failed, holding: %s", pool, err)
                continue
            if decision is not None:
                decisions[pool] = decision
        return decisions

    def _evaluate(self, pool: str, signals: PoolSignals) -> Decision | None:
        now = self._clock()
        known = self._states.get(pool)
        if known is not None and in_cooldown(known, now, self._config.cooldown_s):
            log.debug("%s: cooling down", pool)
            return None
        name = self.deployment(pool)
        replicas = self._scaler.replicas(name)
        # The live count wins: someone may have run `kubectl scale` since the last tick.
        state = replace(known, replicas=replicas) if known else PoolState(replicas)
        decision = decide(pool, state, signals, self._config, now)
        if decision.changed:
            log.info("%s: %d -> %d (%s)", name, replicas, decision.replicas, decision.reason)
            if not self._dry_run:
                self._scaler.set_replicas(name, decision.replicas)
        else:
            log.debug("%s: hold at %d (%s)", name, replicas, decision.reason)
        self._states[pool] = decision.state
        return decision

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            started = self._clock()
            self.tick()
            stop.wait(max(0.0, interval_s - (self._clock() - started)))
