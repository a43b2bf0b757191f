"""The decode worker's core (no gRPC): reservations under a transfer lease, continuous
batching on one step thread, token events to per-request sinks.

Ownership: a request's pages and slot are released exactly once, by `_finish`. Requests in the
running batch are finished only by the step thread; others by whoever ends them (abort, lease
expiry, failed commit) under the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from decode_worker import request as msg
from decode_worker.cache_io import destination_views, first_logits
from decode_worker.request import DecodeRequest, Draining, Event, Failure, Phase, Sink
from engine.model.ling import LingModel
from engine.parallel.rank_link import RankLink
from engine.runner import ModelRunner
from engine.sampling import Sampler, SamplingParams
from engine.stopping import StopRule
from engine.transfer.base import ChecksumMismatch, TransferDescriptor, TransferError
from engine.transfer.select import make_receiver, receiver_backend, receiver_options
from engine.transfer_layout import expected_tensors
from engine.worker_config import WorkerConfig
from engine.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)
StopCheckFactory = Callable[[SamplingParams], Callable[[int], bool]]


class DecodeEngine:
    def __init__(
        self,
        cfg: WorkerConfig,
        model: LingModel,
        eos_ids: tuple[int, ...],
        stop_check_factory: StopCheckFactory | None = None,
        metrics: WorkerMetrics | None = None,
        ranks: RankLink | None = None,
    ) -> None:
        self.cfg, self.model = cfg, model
        self.metrics = metrics or WorkerMetrics("decode")
        self.runner = ModelRunner(model, cfg.num_pages, cfg.page_size, cfg.num_slots, ranks=ranks)
        self.eos_ids, self.stop_check_factory = eos_ids, stop_check_factory
        self.receiver = make_receiver(
            receiver_backend(cfg.transfer_backend),
            self._destination,
            self._on_expired,
            host=cfg.host,
            advertise_host=cfg.advertise_host,
            **self._device_options(),
        )
        self._lock = threading.Condition()
        self._requests: dict[str, DecodeRequest] = {}
        self._admit: list[DecodeRequest] = []
        self._running: list[DecodeRequest] = []
        self._stopping = False
        self._draining = False
        self._completed = 0
        self._thread = threading.Thread(target=self._loop, name="duet-decode-step", daemon=True)
        self._thread.start()

    def _device_options(self) -> dict[str, object]:
        pools = [self.runner.latents.storage, self.runner.full_states]
        return receiver_options(
            receiver_backend(self.cfg.transfer_backend), pools, self.model.device
        )

    # Reservation and transfer --------------------------------------------------------------
    def reserve(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        local_prefill: bool = False,
        lease_s: float = 0.0,
    ) -> TransferDescriptor | None:
        """Pages + a slot. Remote prefill: a transfer lease of `lease_s` (capped by --lease-s;
        0 = that), returning its descriptor. Local prefill: queued for the step loop; None."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) + 1 >= self.model.cfg.max_position_embeddings:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the context")
        with self._lock:
            if self._draining:
                raise Draining("decode worker is draining")
            if request_id in self._requests:
                raise ValueError(f"request {request_id} already exists")
            seq = self.runner.new_sequence(len(prompt_ids) + 1)  # OutOfCapacity propagates
            hidden = torch.empty(
                self.model.cfg.hidden_size, dtype=self.model.dtype, device=self.model.device
            )
            req = DecodeRequest(request_id, list(prompt_ids), params, seq, hidden, Sampler(params))
            if self.stop_check_factory is not None and params.stop:
                req.stop_check = self.stop_check_factory(params)
            self._requests[request_id] = req
            if local_prefill:
                req.local_prefill, req.phase = True, Phase.COMMITTED
                self._admit.append(req)
                self._lock.notify_all()
                return None
        expected = expected_tensors(self.model.cfg, len(prompt_ids), self.model.dtype)
        try:
            lease = min(lease_s, self.cfg.lease_s) if lease_s > 0 else self.cfg.lease_s
            descriptor = self.receiver.reserve(request_id, expected, lease)
        except Exception:
            self._end(request_id, Failure("UNAVAILABLE", "transfer reservation failed"))
            raise
        threading.Thread(target=self._await_commit, args=(request_id,), daemon=True).start()
        return descriptor

    def _destination(self, request_id: str, name: str) -> torch.Tensor | list[torch.Tensor]:
        with self._lock:
            req = self._requests[request_id]
        return destination_views(self.runner, req, name)

    def _await_commit(self, request_id: str) -> None:
        try:
            self.receiver.wait_committed(request_id, self.cfg.lease_s + 1.0)
        except TransferError as exc:
            self.metrics.transfer_failures.labels(reason=type(exc).__name__).inc()
            code = "DATA_LOSS" if isinstance(exc, ChecksumMismatch) else "UNAVAILABLE"
            self._end(
                request_id, Failure(code, f"cache transfer failed: {type(exc).__name__}: {exc}")
            )
            return
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.phase is not Phase.RESERVED or req.abort_requested:
                return
            req.seq.length = len(req.prompt_ids)
            req.phase = Phase.COMMITTED
            self.metrics.transfer_bytes.inc(self._transfer_bytes(len(req.prompt_ids)))
            self._admit.append(req)
            self._lock.notify_all()

    def _transfer_bytes(self, num_tokens: int) -> int:
        return sum(e.nbytes for e in expected_tensors(self.model.cfg, num_tokens, self.model.dtype))

    def _on_expired(self, request_id: str) -> None:
        self._end(
            request_id, Failure("DEADLINE_EXCEEDED", "cache transfer lease expired before commit")
        )

    # Client side -----------------------------------------------------------------------------
    def attach(self, request_id: str, sink: Sink) -> bool:
        with self._lock:
            req = self._requests.get(request_id)
            if req is None:
                return False
            req.attach(sink)
            return True

    def abort(self, request_id: str) -> bool:
        return self._end(request_id, Failure("CANCELLED", "aborted"))

    def _end(self, request_id: str, failure: Failure) -> bool:
        """End a request that is not (yet) running; a running one is flagged for the step thread.

        The transfer is aborted outside the lock (the receiver's threads take it to find
        destinations); once that returns nothing writes into the request's pages."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is None or req.phase is Phase.FINISHED or req.abort_requested:
                return False
            req.abort_requested = True
            if req.phase is Phase.RUNNING:
                return True
            if req in self._admit:
                self._admit.remove(req)
        self.receiver.abort(request_id)
        with self._lock:
            if req.phase is not Phase.FINISHED:
                self._finish(req, failure)
        return True

    def _finish(self, req: DecodeRequest, last: Event | None) -> None:
        """Release the request's pages and slot (caller holds the lock)."""
        req.phase = Phase.FINISHED
        self._completed += int(req.done)
        self.runner.release(req.seq)
        self._requests.pop(req.request_id, None)
        if last is not None:
            req.emit(last)

    # Step loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._admit and not self._running:
                    self._lock.wait(timeout=0.5)
                if self._stopping:
                    return
                admitted, self._admit = self._admit, []
                for req in admitted:
                    req.phase = Phase.RUNNING
                self._running.extend(admitted)
            try:
                self._step(admitted)
            except Exception as exc:  # a bug must not leak the batch: fail it and free
                log.exception("decode step failed")
                with self._lock:
                    for req in self._running:
                        self._finish(req, Failure("INTERNAL", f"decode step failed: {exc}"))
                    self._running = []

    def _step(self, admitted: list[DecodeRequest]) -> None:
        with self.metrics.step_seconds.time():
            self._step_inner(admitted)

    def _step_inner(self, admitted: list[DecodeRequest]) -> None:
        if admitted:
            for req, row in zip(
                admitted, first_logits(self.runner, admitted, self.cfg.prefill_chunk), strict=True
            ):
                self._sample(req, row)
        self._retire()
        decoding = self._make_room()
        if decoding:
            logits = self.runner.decode(
                [r.seq for r in decoding], [r.generated[-1] for r in decoding]
            )
            for req, row in zip(decoding, logits, strict=True):
                self._sample(req, row)
            self._retire()

    def _sample(self, req: DecodeRequest, logits: torch.Tensor) -> None:
        rule = StopRule(req.params, self.eos_ids, self.model.cfg.max_position_embeddings)
        sampled = req.sampler.sample(logits, rule.banned(len(req.generated)))
        self.metrics.tokens.inc()
        req.generated.append(sampled.token)
        n = len(req.generated)
        reason = rule.finish_reason(n, sampled.token, req.seq.length, req.stop_check)
        req.emit(msg.TokenOut(sampled, reason))
        req.done = reason is not None

    def _retire(self) -> None:
        """Free finished and aborted requests at the step boundary."""
        with self._lock:
            keep = []
            for req in self._running:
                if req.done:
                    self._finish(req, None)
                elif req.abort_requested:
                    self._finish(req, Failure("CANCELLED", "aborted"))
                else:
                    keep.append(req)
            self._running = keep

    def _make_room(self) -> list[DecodeRequest]:
        """Pages for one more token per running sequence; preempts the newest requests
        (handed back for re-prefill) rather than failing or stalling."""
        with self._lock:
            while self._running:
                need = sum(
                    self.runner.latents.pages_for(r.seq.length + 1) - len(r.seq.pages)
                    for r in self._running
                )
                if need <= self.runner.latents.num_free:
                    break
                victim = self._running.pop()
                self._finish(victim, msg.Preempted())
            for r in self._running:
                self.runner.ensure_capacity(r.seq, r.seq.length + 1)
            return list(self._running)

    # Introspection and shutdown --------------------------------------------------------------
    def load(self) -> dict[str, object]:
        with self._lock:
            return {
                "running_requests": len(self._running),
                "queued_requests": len(self._admit),
                "pending_transfers": self.receiver.pending(),
                "completed_requests": self._completed,
                **self.runner.pool_report(),
            }

    def drain(self) -> None:
        with self._lock:
            self._draining = True

    def is_idle(self) -> bool:
        with self._lock:
            return not self._requests

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=10)
        with self._lock:
            for req in list(self._requests.values()):
                self.receiver.abort(req.request_id)
                self._finish(req, Failure("UNAVAILABLE", "decode worker shutting down"))
            self._running, self._admit = [], []
        self.receiver.close()
