"""One request from the gateway's point of view: pick a pair, run it, and on failure retry or
migrate so the client sees one uninterrupted stream that ends with tokens or a terminal error
within its deadline.

- A failure before the first token: retried on another pair, invisible to the client.
- Decode failure or preemption mid-stream: the request is re-prefilled as prompt + tokens so
  far on a new pair and the stream continues (with greedy sampling the text is unchanged).
- Bad input (INVALID_ARGUMENT) is never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import grpc

from control_plane.metrics import GatewayMetrics
from control_plane.pd_client import StageError, WorkerPair, generate
from control_plane.prefix_routing import PrefixRouting
from control_plane.registry import Registry, WorkerEntry
from control_plane.router import NoRoom, NoWorker, Router
from duet.v1 import worker_pb2 as pb
from duet.v1 import worker_pb2_grpc as pb_grpc
from engine.sampling import SamplingParams

NO_WORKER_WAIT_S = 0.1
NO_WORKER_GRACE_S = 5.0  # how long a request waits for a worker to (re)appear
OVERLOAD_BACKOFF_S = 0.1


class RequestFailed(RuntimeError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Task:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    timeout_s: float


class Channels:
    """One grpc.aio channel per worker address, reused across requests."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def pair(self, p: WorkerEntry | None, d: WorkerEntry) -> WorkerPair:
        """Stubs for a pair; without a prefill worker its stub points at the decode worker
        (never called: the decode worker prefills locally)."""
        prefill = pb_grpc.PrefillWorkerStub(self._get((p or d).address))
        return WorkerPair(prefill, pb_grpc.DecodeWorkerStub(self._get(d.address)))

    def _get(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


@dataclass
class _Attempt:
    """Where one attempt runs and what it holds in the router's books."""

    prefill: WorkerEntry | None  # None: the decode worker prefills locally
    decode: WorkerEntry
    tokens: int  # prefill tokens booked on the prefill worker (cached prefix excluded)


class Orchestrator:
    def __init__(
        self,
        registry: Registry,
        metrics: GatewayMetrics,
        max_attempts: int = 6,
        lease_s: float = 30.0,
        local_prefill_max_tokens: int = 0,
        prefix: PrefixRouting | None = None,
    ) -> None:
        self.registry, self.metrics, self.prefix = registry, metrics, prefix
        self.router = Router(registry, local_prefill_max_tokens=local_prefill_max_tokens)
        self.channels = Channels()
        self.max_attempts, self.lease_s = max_attempts, lease_s

    async def _cached_prefixes(self, prompt_ids: list[int]) -> dict[str, int]:
        """Prompt tokens each prefill worker holds in cache (empty without an index, for a
        prompt prefilled locally, or when Redis fails: then every worker is a miss)."""
        if self.prefix is None or self.router.prefill_locally(len(prompt_ids)):
            return {}
        workers = self.registry.healthy("prefill")
        cached, seconds = await self.prefix.lookup(prompt_ids, workers)
        self.metrics.prefix_lookup.observe(seconds)
        if not self.prefix.healthy:
            self.metrics.prefix_lookup_failures.inc()
        return cached

    async def _pick(
        self, tokens: int, exclude: list[str], deadline: float, cached: dict[str, int]
    ) -> _Attempt:
        """Wait for a pair: while pools are full the request queues here until its deadline
        (overload: RESOURCE_EXHAUSTED); with no healthy worker of a role it gives up after
        NO_WORKER_GRACE_S (UNAVAILABLE)."""
        no_worker_until = min(deadline, time.monotonic() + NO_WORKER_GRACE_S)
        while True:
            try:
                p, d = self.router.pick(tokens, exclude, cached)
            except NoRoom as exc:
                no_worker_until = min(deadline, time.monotonic() + NO_WORKER_GRACE_S)
                if time.monotonic() + NO_WORKER_WAIT_S > deadline:
                    raise RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from exc
                await asyncio.sleep(NO_WORKER_WAIT_S)
                continue
            except NoWorker as exc:
                if time.monotonic() + NO_WORKER_WAIT_S > no_worker_until:
                    raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
                exclude.clear()  # a worker marked failed may have come back
                await asyncio.sleep(NO_WORKER_WAIT_S)
                continue
            to_compute = tokens
            if p is not None:  # the router books what the worker will compute, not the prefix
                hit = min(cached.get(p.worker_id, 0), tokens - 1)
                to_compute = tokens - hit
                self.registry.assign(p, to_compute)
                self.metrics.prefix_routed_tokens.inc(hit)
            self.registry.assign(d, 1)
            return _Attempt(p, d, to_compute)

    def _done(self, a: _Attempt) -> None:
        if a.prefill is not None:
            self.registry.release(a.prefill, a.tokens)
        self.registry.release(a.decode, 1)

    async def run(self, task: Task) -> AsyncIterator[pb.TokenEvent]:
        """Token events of the request; raises RequestFailed with the status for the client."""
        start = time.monotonic()
        deadline = start + task.timeout_s
        tokens: list[int] = []
        exclude: list[str] = []
        last = RequestFailed(grpc.StatusCode.UNAVAILABLE, "no attempt made")
        # One lookup per request: a retry or a migration (prompt + tokens so far) still
        # shares the prompt's cached prefix.
        cached = await self._cached_prefixes(task.prompt_ids)
        for attempt in range(self.max_attempts):
            a = await self._pick(len(task.prompt_ids) + len(tokens), exclude, deadline, cached)
            if attempt == 0:
                self.metrics.queue.observe(time.monotonic() - start)
            params = replace(
                task.params,
                max_tokens=task.params.max_tokens - len(tokens),
                min_tokens=max(0, task.params.min_tokens - len(tokens)),
            )
            pair = self.channels.pair(a.prefill, a.decode)
            rid = f"{task.request_id}.{attempt}"
            try:
                stream = generate(
                    pair,
                    rid,
                    task.prompt_ids + tokens,
                    params,
                    deadline - time.monotonic(),
                    self.lease_s,
                    local_prefill=a.prefill is None,
                )
                async for event in stream:
                    if event.finish_reason == "preempted":
                        self.metrics.migrations.inc()
                        break
                    tokens.append(event.token_id)
                    yield event
                    if event.finish_reason:
                        return
            except StageError as err:
                self._on_failure(err, a, exclude, deadline, bool(tokens))
                last = RequestFailed(err.code, f"gave up after {attempt + 1} attempts: {err}")
                if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(OVERLOAD_BACKOFF_S * (attempt + 1))
            finally:
                self._done(a)
        raise last

    def _on_failure(
        self, err: StageError, a: _Attempt, exclude: list[str], deadline: float, streaming: bool
    ) -> None:
        if err.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise RequestFailed(err.code, err.details)
        if time.monotonic() >= deadline:
            raise RequestFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "request deadline exceeded")
        culprit = a.prefill if err.side == "prefill" and a.prefill is not None else a.decode
        if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            exclude.append(culprit.address)
            if err.code == grpc.StatusCode.UNAVAILABLE:
                self.registry.mark_failed(culprit.address)
        if streaming:
            self.metrics.migrations.inc()
        else:
            self.metrics.retries.labels(reason=f"{err.side}_{err.code.name.lower()}").inc()
