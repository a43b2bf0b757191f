"""The prefill worker's core (no gRPC): a queue of jobs, batched up to a token budget on one
step thread, each prompt chunked, each layer's latents / final state handed to the job's
outbound transfer as soon as that layer is done.

Ownership: a job's pages and slot live only within one step (`_run_batch` frees them in
`finally`); what is sent are copies, so a slow or dead peer never holds pool memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

import torch

from engine.model.ling import LingModel
from engine.parallel.rank_link import RankLink
from engine.runner import ModelRunner, PrefillItem, SeqCache
from engine.transfer.base import TransferDescriptor, TransferError
from engine.transfer.select import make_sender
from engine.transfer_layout import HIDDEN, layer_tensor_name
from engine.worker_config import WorkerConfig
from engine.worker_metrics import WorkerMetrics
from prefill_worker.jobs import CachedPrefix, Draining, PrefillJob, PrefillResult
from prefill_worker.outbound import Outbound
from prefill_worker.prefix_cache import PrefixLookupResult, WorkerPrefixCache

log = logging.getLogger(__name__)


class PrefillEngine:
    def __init__(
        self,
        cfg: WorkerConfig,
        model: LingModel,
        metrics: WorkerMetrics | None = None,
        prefix_cache: WorkerPrefixCache | None = None,
        ranks: RankLink | None = None,
    ) -> None:
        self.cfg, self.model = cfg, model
        self.prefix_cache = prefix_cache
        self.metrics = metrics or WorkerMetrics("prefill")
        self.runner = ModelRunner(model, cfg.num_pages, cfg.page_size, cfg.num_slots, ranks=ranks)
        self._lock = threading.Condition()
        self._queue: deque[PrefillJob] = deque()
        self._jobs: dict[str, PrefillJob] = {}
        self._stopping = False
        self._draining = False
        self._completed = 0
        self._thread = threading.Thread(target=self._loop, name="duet-prefill-step", daemon=True)
        self._thread.start()

    def submit(
        self,
        request_id: str,
        prompt_ids: list[int],
        destination: TransferDescriptor,
        deadline_s: float,
        prefix: CachedPrefix | None = None,
    ) -> Future[PrefillResult]:
        """Queue a prompt; with `prefix`, its first prefix.num_tokens tokens are not computed
        (at least one token always is: the last one's hidden state goes to the decode side)."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        if prefix is not None and not 0 < prefix.num_tokens < len(prompt_ids):
            raise ValueError("a cached prefix must be shorter than the prompt")
        if len(prompt_ids) + 1 >= self.model.cfg.max_position_embeddings:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens exceeds the context")
        bad = [t for t in prompt_ids if t >= self.model.cfg.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range: {bad[:5]}")
        deadline = time.monotonic() + deadline_s
        job = PrefillJob(request_id, list(prompt_ids), destination, deadline, prefix)
        with self._lock:
            if self._draining:
                raise Draining("prefill worker is draining")
            if request_id in self._jobs:
                raise ValueError(f"request {request_id} is already prefilling")
            self._jobs[request_id] = job
            self._queue.append(job)
            self._lock.notify_all()
        job.result.add_done_callback(lambda _f: self._forget(request_id))
        return job.result

    def _forget(self, request_id: str) -> None:
        with self._lock:
            job = self._jobs.pop(request_id, None)
            if job is not None and job.result.exception() is None:
                self._completed += 1

    def abort(self, request_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return False
            job.aborted = True
            if job in self._queue:
                self._queue.remove(job)
                job.result.set_exception(TransferError("aborted before prefill started"))
                return True
        if job.outbound is not None:
            job.outbound.abort()
        return True

    def _take_batch(self) -> list[PrefillJob]:
        """Jobs up to the token budget (always at least one), oldest first."""
        batch: list[PrefillJob] = []
        tokens = 0
        while self._queue:
            n = len(self._queue[0].prompt_ids)
            if batch and (
                tokens + n > self.cfg.max_batch_tokens
                or len(batch) >= self.runner.states.slots.total
            ):
                break
            batch.append(self._queue.popleft())
            tokens += n
        return batch

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._queue:
                    self._lock.wait(timeout=0.5)
                if self._stopping:
                    return
                batch = self._take_batch()
            live = [j for j in batch if not self._expired(j)]
            if live:
                self._run_batch(live)

    def _expired(self, job: PrefillJob) -> bool:
        if time.monotonic() < job.deadline:
            return False
        job.result.set_exception(TransferError("prefill deadline passed while queued"))
        return True

    def _start_job(
        self, job: PrefillJob, b: int, lookups: dict[int, PrefixLookupResult]
    ) -> PrefillItem:
        """Pages, slot and resume point for job b; its cache lookup (if any) is lookups[b]."""
        seq = self.runner.new_sequence(len(job.prompt_ids))
        snapshot_at: tuple[int, ...] = ()
        try:
            if job.prefix is not None:
                self.runner.load_prefix(seq, job.prefix.latents, job.prefix.state)
            elif self.prefix_cache is not None:
                found = self.prefix_cache.lookup(job.prompt_ids)
                lookups[b] = found
                if found.handle is not None:
                    self.runner.load_prefix(seq, found.handle.latents, found.handle.state)
                snapshot_at = self.prefix_cache.snapshot_at(len(job.prompt_ids), seq.length)
            job.cached_tokens = seq.length
            sender = make_sender(job.destination.backend)
            job.outbound = Outbound(sender, job.destination, job.deadline)
        except BaseException:
            self.runner.release(seq)
            raise
        return PrefillItem(seq, job.prompt_ids[seq.length :], snapshot_at)

    def _run_batch(self, jobs: list[PrefillJob]) -> None:
        seqs: list[SeqCache] = []
        lookups: dict[int, PrefixLookupResult] = {}  # job index -> its pinned lookup
        start = time.monotonic()
        try:
            items = []
            for b, job in enumerate(jobs):
                items.append(self._start_job(job, b, lookups))
                seqs.append(items[-1].seq)

            def layer_done(layer: int, finishing: list[int]) -> None:
                name = layer_tensor_name(self.model.cfg, layer)
                for b in finishing:
                    tensor = self._layer_tensor(seqs[b], layer, len(jobs[b].prompt_ids))
                    jobs[b].outbound.put(name, tensor)  # type: ignore[union-attr]

            out = self.runner.prefill_chunked(items, self.cfg.prefill_chunk, layer_done)
            compute_s = time.monotonic() - start
            self.metrics.step_seconds.observe(compute_s)
            self.metrics.tokens.inc(sum(len(it.tokens) for it in items))
            for b, job in enumerate(jobs):
                job.outbound.put(HIDDEN, out.hidden[b].clone())  # type: ignore[union-attr]
                job.outbound.commit()  # type: ignore[union-attr]
                self._resolve_when_sent(job, compute_s, start)
            self._cache_prompts(jobs, seqs, lookups, out.snapshots)
        except Exception as exc:
            log.exception("prefill batch failed")
            for job in jobs:
                if job.outbound is not None:
                    job.outbound.abort()
                if not job.result.done():
                    job.result.set_exception(exc)
        finally:
            for s in seqs:
                self.runner.release(s)
            for b, found in lookups.items():
                self.prefix_cache.finished(found, len(jobs[b].prompt_ids))  # type: ignore[union-attr]

    def _cache_prompts(
        self,
        jobs: list[PrefillJob],
        seqs: list[SeqCache],
        lookups: dict[int, PrefixLookupResult],
        snapshots: dict[tuple[int, int], torch.Tensor],
    ) -> None:
        """Insert each prompt's new snapshotted blocks; a cache failure never fails a request
        (the caches are already on their way to the decode side)."""
        if self.prefix_cache is None:
            return
        for b, found in lookups.items():
            snaps = {count: s for (i, count), s in snapshots.items() if i == b}
            if not snaps:
                continue
            try:
                latents = self.runner.read_latents(seqs[b])
                self.prefix_cache.insert(found.hashes, latents, snaps)
            except Exception:
                log.exception("prefix cache insert failed for %s", jobs[b].request_id)

    def _layer_tensor(self, seq: SeqCache, layer: int, num_tokens: int) -> torch.Tensor:
        if self.model.cfg.is_mla_layer(layer):
            return self.runner.layer_latents(seq, self.model.mla_index[layer], num_tokens)
        return self.runner.full_states[seq.slot, self.model.linear_index[layer]].clone()

    def _resolve_when_sent(self, job: PrefillJob, compute_s: float, start: float) -> None:
        def done(f: Future[int]) -> None:
            if f.exception() is not None:
                self.metrics.transfer_failures.labels(reason=type(f.exception()).__name__).inc()
                job.result.set_exception(f.exception())  # type: ignore[arg-type]
                return
            self.metrics.transfer_bytes.inc(f.result())
            self.metrics.transfer_seconds.observe(time.monotonic() - start - compute_s)
            n = len(job.prompt_ids)
            computed = n - job.cached_tokens
            elapsed = time.monotonic() - start
            job.result.set_result(PrefillResult(n, computed, f.result(), compute_s, elapsed))

        job.outbound.done.add_done_callback(done)  # type: ignore[union-attr]

    def load(self) -> dict[str, object]:
        with self._lock:
            return {
                "queued_requests": len(self._queue),
                "queued_tokens": sum(len(j.prompt_ids) for j in self._queue),
                "running_requests": len(self._jobs) - len(self._queue),
                "pending_transfers": sum(
                    1
                    for j in self._jobs.values()
                    if j.outbound is not None and not j.outbound.done.done()
                ),
                "completed_requests": self._completed,
                **self._pool_report(),
            }

    def _pool_report(self) -> dict[str, object]:
        """Pools plus the prefix cache; a broken cache invariant fails integrity like a pool."""
        report = self.runner.pool_report()
        if self.prefix_cache is None:
            return report
        try:
            self.prefix_cache.check_integrity()
        except AssertionError as exc:
            report["integrity_ok"] = False
            report["integrity_error"] = f"prefix cache: {exc}"
        return {**report, "prefix_cache": self.prefix_cache.load()}

    def drain(self) -> None:
        with self._lock:
            self._draining = True

    def is_idle(self) -> bool:
        with self._lock:
            return not self._jobs

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            pending = list(self._jobs.values())
            self._queue.clear()
            self._lock.notify_all()
        for job in pending:
            if job.outbound is not None:
                job.outbound.abort()
            if not job.result.done():
                job.result.set_exception(TransferError("prefill worker shutting down"))
        self._thread.join(timeout=10)
        if self.prefix_cache is not None:
            self.prefix_cache.close()
