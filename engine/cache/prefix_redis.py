"""Redis connections for the prefix cache, and the guard that makes Redis an accelerator rather
than a dependency: a failed call is a counted miss, never an exception to the caller.

After a failure the guard skips Redis for `retry_after_s`, so a dead or black-holed server
costs at most one timeout per interval; the first call after that interval probes again and
a success makes the guard healthy. Nothing needs restarting when Redis comes back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster, RedisClusterException
from redis.retry import Retry

T = TypeVar("T")
Client = redis.Redis | RedisCluster
URL_SCHEMES = ("redis", "rediss", "unix")
REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)


def _check_url(url: str, cluster: bool) -> None:
    scheme = urlsplit(url).scheme
    allowed = URL_SCHEMES[:2] if cluster else URL_SCHEMES
    if scheme not in allowed:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r} in {url!r}; use {allowed}")


def connect(
    url: str, *, password: str | None = None, timeout_s: float = 0.25, cluster: bool = False
) -> Client:
    """A client for `redis://`, `rediss://` (TLS) or `unix://` URLs (a Redis Cluster client
    for the first two with `cluster`). A password in the URL wins over `password`. Every
    socket operation, connecting included, times out after `timeout_s`; redis-py's own
    retries are off (the guard decides when to try again). A cluster client contacts the
    cluster here, so it may raise one of REDIS_ERRORS; a plain client connects lazily."""
    _check_url(url, cluster)
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    options: dict[str, object] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
    }
    if password is not None:
        options["password"] = password
    if cluster:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class RedisGuard:
    """Runs Redis calls; counts failures and calls skipped while backing off. Thread-safe."""

    def __init__(
        self, retry_after_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._healthy = True
        self._retry_at = 0.0
        self.failures = 0
        self.skipped = 0
        self.recoveries = 0
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        """False from a failed call until the next successful one."""
        return self._healthy

    def call(self, fn: Callable[[], T], default: T) -> tuple[T, bool]:
        """(fn(), True), or (default, False) when Redis failed or is being skipped."""
        with self._lock:
            if not self._healthy and self._clock() < self._retry_at:
                self.skipped += 1
                return default, False
        try:
            result = fn()
        except REDIS_ERRORS as exc:
            with self._lock:
                self._healthy = False
                self._retry_at = self._clock() + self.retry_after_s
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return default, False
        with self._lock:
            if not self._healthy:
                self.recoveries += 1
            self._healthy = True
        return result, True


class RedisLink:
    """A Redis client built on first use (a cluster client needs the cluster up to be built)
    and the guard every call goes through."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout_s: float = 0.25,
        cluster: bool = False,
        retry_after_s: float = 1.0,
    ) -> None:
        _check_url(url, cluster)  # configuration errors are loud, at construction
        self._connect = lambda: connect(
            url, password=password, timeout_s=timeout_s, cluster=cluster
        )
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.guard = RedisGuard(retry_after_s)

    @property
    def healthy(self) -> bool:
        return self.guard.healthy

    @property
    def client(self) -> Client:
        """The client, built now if needed (may raise one of REDIS_ERRORS for a cluster)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def run(self, fn: Callable[[Client], T], default: T) -> tuple[T, bool]:
        """(fn(client), True), or (default, False) when Redis failed or is being skipped."""
        return self.guard.call(lambda: fn(self.client), default)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
